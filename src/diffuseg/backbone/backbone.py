"""`DiffusionBackbone`: one UNet pass over a batch of images that records what methods need."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..imageio import ImageInput, preprocess, stack_batch
from ..ops import denoising
from .batch_input import latent_rows, model_input, prompt_rows, vae_latents
from .features import FeatureRequest, Features
from .layers import recorded_bytes, unet_layer_map
from .loading import (
    DEFAULT_MODEL,
    NotADiffusionModelError,
    load_folder,
    resolve_model,
)
from .prompts import PromptEmbeddings, encode_text, encode_weighted
from .protocol import LayerMap
from .recorder import EarlyExit, record
from .single_file import load_single_file

__all__ = ["DiffusionBackbone", "PromptEmbeddings", "FAMILIES", "UNET_FAMILIES", "model_family"]

#: The families of UNet models (`DiffusionBackbone.family`).
UNET_FAMILIES = ("sd1", "sd2", "sdxl", "toy", "other")
#: Model families that select method presets: the UNets', then the diffusion transformers'
#: (`diffuseg.backbone.mmdit.MMDiTBackbone.family`).
FAMILIES = (*UNET_FAMILIES, "sd3", "sd35", "flux", "toy-mmdit")


def model_family(unet: nn.Module) -> str:
    """The family of a UNet from its config: "sdxl" (pooled text + time ids), "sd1" (768-d
    CLIP text), "sd2" (1024-d OpenCLIP text), else "other". ("toy" is set by the loader.)"""
    config = unet.config
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(getattr(config, "cross_attention_dim", None), "other")


class DiffusionBackbone:
    """The components of a text-to-image latent diffusion model and one-pass feature extraction.

    Construct with `from_pretrained` (hub id, folder, single file, "toy"), from a loaded
    diffusers pipeline (`from_pipeline`, no copies) or from components (`from_components`, the
    constructor). CPU and float32 by default; move with `.to(device, dtype)`.

    Args:
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL`.
        text_encoder: `CLIPTextModel` (None for models with only a second encoder).
        tokenizer: `CLIPTokenizer` for `text_encoder`.
        scheduler: any diffusers scheduler with `add_noise` (its `num_train_timesteps` bounds t).
        text_encoder_2, tokenizer_2: the second encoder of SDXL-family models.
        name: where the model came from (hub id or path), for reports.
        family: the model family that selects method presets (`FAMILIES`); None = derived
            from the UNet config (`model_family`).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module | None,
        tokenizer: Any,
        scheduler: Any,
        text_encoder_2: nn.Module | None = None,
        tokenizer_2: Any = None,
        name: str = "",
        family: str | None = None,
    ) -> None:
        if not hasattr(unet, "attn_processors") or not hasattr(unet, "config"):
            raise NotADiffusionModelError(
                f"`unet` must be a diffusers UNet2DConditionModel, got {type(unet).__name__}."
            )
        if not hasattr(vae, "encode"):
            raise NotADiffusionModelError(f"`vae` must be a diffusers AutoencoderKL, got {type(vae).__name__}.")
        if text_encoder is None and text_encoder_2 is None:
            raise ValueError("a text encoder is required (`text_encoder` or `text_encoder_2`).")
        self.unet, self.vae, self.scheduler = unet.eval(), vae.eval(), scheduler
        self.text_encoder = text_encoder.eval() if text_encoder is not None else None
        self.text_encoder_2 = text_encoder_2.eval() if text_encoder_2 is not None else None
        self.tokenizer, self.tokenizer_2, self.name = tokenizer, tokenizer_2, name
        if family is not None and family not in UNET_FAMILIES:
            raise ValueError(f"`family` must be one of {UNET_FAMILIES} or None, got {family!r}.")
        self.family = family or model_family(unet)
        self._record_bytes: dict[tuple[Any, ...], int] = {}  # record_bytes by its arguments
        for m in self._modules():
            m.requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_components(cls, **components: Any) -> DiffusionBackbone:
        """Same as the constructor; mirrors diffusers' `Pipeline(**components)`."""
        return cls(**components)

    @classmethod
    def from_pipeline(cls, pipe: Any) -> DiffusionBackbone:
        """Wrap the components of an existing diffusers pipeline (no copies)."""
        names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")
        return cls(**{n: getattr(pipe, n, None) for n in names}, name=type(pipe).__name__)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        *,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        config: str | None = None,
    ) -> DiffusionBackbone:
        """Load a model: hub id (local cache first), local diffusers folder, single file, or "toy".

        Args:
            model: hub id (default SD 1.5), folder, `.safetensors` / `.ckpt` file, or ``"toy"``.
            torch_dtype: load weights in this dtype (default float32).
            local_files_only: never touch the network.
            config: for single files: diffusers config folder or hub id describing the file.

        Raises:
            ModelNotFoundError: the model is nowhere to be found (the message says what to pass).
            NotADiffusionModelError: the path is not a text-to-image diffusion model.
        """
        path = resolve_model(str(model), local_files_only=local_files_only)
        if path.is_file():
            if path.suffix.lower() not in (".safetensors", ".ckpt"):
                raise NotADiffusionModelError(
                    f"{path} is not a model: give a diffusers folder or a .safetensors/.ckpt file."
                )
            parts = load_single_file(path, config=config, torch_dtype=torch_dtype, local_files_only=local_files_only)
        else:
            parts = load_folder(path, torch_dtype=torch_dtype)
        parts.setdefault("text_encoder", None)
        parts.setdefault("tokenizer", None)
        # diffuseg's own proving-ground exports carry their training record
        family = "toy" if path.is_dir() and (path / "TRAINING.json").is_file() else None
        return cls(**parts, name=str(model), family=family)

    # ------------------------------------------------------------------ device / dtype
    def _modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusionBackbone:
        """Move every component (like `DiffusionPipeline.to`); returns self."""
        for m in self._modules():
            target = dtype
            if m is self.vae and dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
                # SDXL-family VAEs overflow in float16 (their config sets `force_upcast`), as in
                # diffusers' pipelines: keep the VAE in float32.
                target = torch.float32
            same_device = device is None or torch.device(device) == next(m.parameters()).device
            if same_device and target is None:
                continue
            m.to(device=device, dtype=target) if target is not None else m.to(device)
        return self

    @property
    def prompt_tokenizer(self) -> Any:
        """The tokenizer whose ids the text encoder sees and `Features.token_ids` hold (the
        first encoder's; SDXL-family models with only a second encoder use that one)."""
        return self.tokenizer if self.tokenizer is not None else self.tokenizer_2

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ------------------------------------------------------------------ sizes from configs
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (len(vae.block_out_channels) - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_scale_factor(self) -> int:
        """Total downsampling of the UNet: 2 ** (number of down blocks with a downsampler)."""
        n = sum(1 for b in self.unet.down_blocks if getattr(b, "downsamplers", None))
        return 2**n

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (VAE factor x UNet factor)."""
        return self.vae_scale_factor * self.unet_scale_factor

    @property
    def native_size(self) -> int:
        """The input side the UNet was trained at: `unet.sample_size` x VAE factor (512 for
        SD 1.x and SD 2-base, 768 for SD 2.x-768, 1024 for SDXL / SSD-1B)."""
        sample = self.unet.config.sample_size
        side = max(sample) if isinstance(sample, (tuple, list)) else int(sample)
        return side * self.vae_scale_factor

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL-family UNets (pooled text + time ids as `added_cond_kwargs`)."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @functools.cached_property
    def layer_map(self) -> LayerMap:
        """Where this UNet's features are, by role (`layers.unet_layer_map`; built once)."""
        return unet_layer_map(self.unet)

    def preprocess(
        self,
        images: Sequence[ImageInput],
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Crop and resize images to this model's input (see `diffuseg.imageio.preprocess`).

        Args:
            images: paths, PIL images, arrays or (3, H, W) tensors in [0, 1].
            image_size: model input side; None = `native_size`. Must be a multiple of
                `size_multiple`.
            resize_mode: one of `diffuseg.imageio.RESIZE_MODES`.

        Returns:
            (B, 3, h, w) float32 pixels in [0, 1] and one meta dict per image.

        Raises:
            ValueError: on images smaller than the latent grid, or sizes that differ in a batch.
        """
        image_size = image_size or self.native_size
        latent_side = image_size // self.vae_scale_factor  # smaller images carry < 1 px per token
        tensors, metas = preprocess(list(images), image_size, resize_mode, self.size_multiple, min_side=latent_side)
        return stack_batch(tensors), metas

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_images(
        self,
        pixels: torch.Tensor,
        sample: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """VAE-encode images.

        Args:
            pixels: (B, 3, H, W) float in [0, 1]; H, W multiples of `vae_scale_factor`.
            sample: "mean" (posterior mean, DiffSeg/DiffCut) or "sample" (a posterior draw).
            generator: for "sample": one generator, or B generators (one per image).

        Returns:
            (B, C_latent, H/f, W/f) latents times the VAE's `scaling_factor`, in `self.dtype`.
        """
        return vae_latents(self.vae, pixels, sample, generator, self.device, self.dtype)

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], token_weights: Sequence[Sequence[tuple[int, float]]] | None = None
    ) -> PromptEmbeddings:
        """Tokenize and encode prompts (SD: last hidden state; SDXL: both encoders' penultimate
        hidden states concatenated, plus the second encoder's pooled projection).

        Args:
            prompts: B prompts.
            token_weights: None, or per prompt (token position, weight) pairs. A weighted
                token's embedding e becomes ``e0 + w * (e - e0)``, e0 the empty prompt's
                embedding at that position: Compel's weighting (compel 2.x
                ``EmbeddingsProvider.build_weighted_embedding_tensor``), which DiffSegmenter's
                ``word++`` (w = 1.1^2 = 1.21) goes through. The pooled embedding is unchanged.

        Raises:
            ValueError: if `token_weights` does not have one entry per prompt or a position is
                outside the T tokens.
        """
        return encode_weighted(self._encode, prompts, token_weights)

    def _encode(self, prompts: list[str]) -> PromptEmbeddings:
        """Tokenize and run the text encoder(s); see `encode_prompts`."""
        return encode_text(
            prompts,
            self.prompt_tokenizer,
            self.text_encoder,
            self.tokenizer_2,
            self.text_encoder_2,
            self.device,
            self.dtype,
        )

    def added_cond(self, prompt: PromptEmbeddings, size: tuple[int, int]) -> dict[str, torch.Tensor] | None:
        """The UNet's `added_cond_kwargs` for `prompt`'s rows at model input `size` (H, W):
        SDXL-family pooled text + time ids, None for other UNets."""
        if not self.is_sdxl:
            return None
        if prompt.pooled is None:
            raise ValueError("this SDXL-shaped UNet needs a pooled text embedding (`text_encoder_2`).")
        h, w = size
        # (original size, crop top-left, target size), as the SDXL pipeline builds add_time_ids
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device)
        return {"text_embeds": prompt.pooled, "time_ids": time_ids.expand(prompt.pooled.shape[0], -1)}

    def record_bytes(self, request: FeatureRequest, model_size: tuple[int, int], rows: int = 1) -> int:
        """Bytes of float32 attention maps that recording `request` for `rows` images of model
        input `model_size` (H, W) allocates: the kept maps (per layer or per resolution) plus the
        largest map being recorded. Computed from the UNet's structure; no pass is run."""
        key = (request, tuple(model_size), rows)
        if key not in self._record_bytes:
            if len(self._record_bytes) >= 1024:  # many input sizes: start afresh
                self._record_bytes.clear()
            f = self.vae_scale_factor
            latent = (-(-model_size[0] // f), -(-model_size[1] // f))
            text = self.prompt_tokenizer.model_max_length
            self._record_bytes[key] = recorded_bytes(self.unet, request, latent, text, rows)
        return self._record_bytes[key]

    def check_timestep(self, timestep: int) -> int:
        """Validate `timestep` against the scheduler's range [0, num_train_timesteps)."""
        if not isinstance(timestep, int) or not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"`timestep` must be an int in [0, {self.num_train_timesteps}), got {timestep!r}.")
        return timestep

    # ------------------------------------------------------------------ noise and prediction
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """`latents` (B, C, h, w) noised to `timestep` with `noise` (B, C, h, w): the scheduler's
        `add_noise`, sqrt(abar_t) * latents + sqrt(1 - abar_t) * noise; same shape and dtype.

        Raises:
            ValueError: if `timestep` is not an int in [0, num_train_timesteps).
        """
        return self.scheduler.add_noise(latents, noise, self._timesteps(latents, timestep))

    def predict(
        self, latents: torch.Tensor, timestep: int, prompt: PromptEmbeddings, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """The denoiser's prediction (B, C, h, w) for `latents` (B, C, h, w) at `timestep` under
        `prompt`'s B rows, for model input `image_size` (H, W) (`unet_forward`)."""
        return self.unet_forward(latents, timestep, prompt, image_size)

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """What `predict` should return, (B, C, h, w), for `latents` (B, C, h, w) noised with
        `noise` at `timestep`: the noise ("epsilon") or the velocity ("v_prediction").

        Raises:
            ValueError: on a bad `timestep` or another prediction type of the scheduler.
        """
        return denoising.prediction_target(self.scheduler, latents, noise, self._timesteps(latents, timestep))

    def _timesteps(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        """`timestep`, checked, as a long (B,) tensor on `latents`' device."""
        t = self.check_timestep(timestep)
        return torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)

    # ------------------------------------------------------------------ the pass
    @torch.no_grad()
    def unet_forward(
        self, latents: torch.Tensor, timestep: int, prompt: PromptEmbeddings, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """One plain UNet call; returns the prediction (B, C, h, w)."""
        t = torch.full((latents.shape[0],), timestep, device=self.device, dtype=torch.long)
        return self.unet(
            latents, t, encoder_hidden_states=prompt.embeds, added_cond_kwargs=self.added_cond(prompt, image_size)
        ).sample

    @torch.no_grad()
    def extract(
        self,
        images: ImageInput | Sequence[ImageInput] | torch.Tensor,
        request: FeatureRequest,
        prompts: str | Sequence[str] = "",
        timestep: int = 300,
        *,
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
        add_noise: bool = False,
        shared_noise: bool = False,
        latent_mode: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        prompts_per_image: int = 1,
        token_weights: Sequence[Sequence[tuple[int, float]]] | None = None,
    ) -> Features:
        """Run one UNet pass over a batch and record what `request` asks for.

        Args:
            images: one image or a list (paths, PIL, arrays, (3,H,W) tensors in [0,1]), or a
                (B, 3, H, W) float tensor in [0, 1] already at model size.
            request: what to record (`FeatureRequest`).
            prompts: one prompt for all images, or one per row: B * `prompts_per_image`,
                image-major ("" = unconditional).
            timestep: UNet timestep, in [0, scheduler.num_train_timesteps).
            image_size, resize_mode: preprocessing (see `diffuseg.imageio.preprocess`);
                `image_size` None means the model's `native_size`.
            add_noise: noise the latent to `timestep` with the scheduler (`add_noise`).
            shared_noise: one noise draw for the whole batch (DiffCut's reference behaviour)
                instead of one per image.
            latent_mode: VAE posterior "mean" or "sample".
            generator: randomness for noise and posterior samples: one generator for the batch
                (drawn in order), or a sequence of B generators, one per image, each image's
                draws coming from its own (so an image's noise does not depend on its batch;
                `shared_noise` then has no effect across images, as a draw shared by a batch
                would tie each image's result to its neighbours).
            prompts_per_image: P; each image's latent (and noise) is repeated for its P prompts
                in the same UNet call.
            token_weights: None, or per prompt row (token position, weight) pairs that emphasise
                those tokens (see `encode_prompts`).

        Returns:
            `Features` with B * P rows (image-major), attention maps in float32.
        """
        self.check_timestep(timestep)
        pixels, metas = model_input(images, lambda b: self.preprocess(b, image_size, resize_mode), self.size_multiple)
        b = pixels.shape[0]
        prompt_list = prompt_rows(prompts, b, prompts_per_image)
        latents, pixels, metas = latent_rows(
            self, pixels, metas, timestep=timestep, latent_mode=latent_mode, add_noise=add_noise,
            shared_noise=shared_noise, generator=generator, prompts_per_image=prompts_per_image,
        )  # fmt: skip
        prompt = self.encode_prompts(prompt_list, token_weights)
        return self._record(request, latents, timestep, prompt_list, prompt, pixels, metas)

    def _record(
        self,
        request: FeatureRequest,
        latents: torch.Tensor,
        timestep: int,
        prompts: list[str],
        prompt: PromptEmbeddings,
        pixels: torch.Tensor,
        metas: list[dict[str, Any]],
    ) -> Features:
        """The UNet call on `latents` (one row per prompt: `prompts`, encoded as `prompt`) with
        `request` recorded, as `Features`."""
        latent_size = (int(latents.shape[-2]), int(latents.shape[-1]))
        with record(self.unet, request, latent_size) as store:
            if not request.is_empty:
                try:
                    self.unet_forward(latents, timestep, prompt, tuple(pixels.shape[-2:]))
                except EarlyExit:
                    pass
        return Features(
            self_attention=store.maps["self"],
            cross_attention=store.maps["cross"],
            hidden_states=store.hidden,
            layer_sizes=store.sizes,
            layer_counts={**store.counts["self"], **store.counts["cross"]},
            images=pixels.cpu(),
            prompts=prompts,
            token_ids=prompt.token_ids,
            tokens=prompt.tokens,
            tokenizer=self.prompt_tokenizer,
            latent_size=latent_size,
            timestep=timestep,
            normalization=request.normalization,
            meta=metas,
            layer_map=self.layer_map,
        )
