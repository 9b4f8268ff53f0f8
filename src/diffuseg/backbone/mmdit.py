"""`MMDiTBackbone`: a diffusion transformer (SD3, SD3.5, FLUX.1) as a source of recorded features.

The counterpart of `DiffusionBackbone` for MM-DiT pipelines: it preprocesses images, VAE-encodes
them, noises the latent the flow-matching way, encodes prompts with the pipeline's own
``encode_prompt`` (so the text tokens are in the model's order: SD3's 77 CLIP tokens then its T5
tokens, FLUX's T5 tokens), runs the transformer once and returns what `joint_attention`
recorded as `Features`: per requested layer, ``self_attention[layer]`` is the image→image block
(B, N, N), rows re-normalised over image keys, and ``cross_attention[layer]`` the image→text
block (B, N, T), with ``layer_sizes[layer]`` the (h, w) token grid.

Conventions (reference: ``mmdit_and_fast_ncut.md`` §A.0):

* timesteps are SD's DDPM timesteps [0, 1000) on every family: t becomes the sigma with the
  same signal-to-noise ratio (`noise_levels.flow_sigma`; t = 300 -> 0.454), and a real image is
  noised as ``sigma * noise + (1 - sigma) * x`` (the flow-matching scheduler's
  ``scale_noise``). SD3's transformer takes sigma * 1000; FLUX's takes sigma (it multiplies by
  1000 inside) and, on guidance-distilled checkpoints (FLUX-dev), a guidance value
  (`FLUX_GUIDANCE`, the pipeline's default 3.5).
* FLUX packs 2x2 latent patches into one token; SD3 patchifies inside the transformer. Either
  way an input side must be a multiple of `size_multiple` (VAE factor x patch size).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..imageio import ImageInput, preprocess, stack_batch
from .batch_input import latent_rows, model_input, prompt_rows, vae_latents
from .features import FeatureRequest, Features
from .joint_attention import JointRequest, joint_layers, record_joint, recording_bytes
from .mmdit_layers import block_outputs, joint_request, mmdit_layer_map
from .mmdit_text import TextPart, encode, first_part_length, first_tokenizer, t5_length, text_parts
from .noise_levels import flow_sigma
from .prompts import PromptEmbeddings, encode_weighted
from .protocol import LayerMap

__all__ = [
    "MMDiTBackbone",
    "MMDIT_FAMILIES",
    "TOY_FAMILY",
    "FLUX_GUIDANCE",
    "TextPart",
    "check_pipeline_folder",
    "mmdit_family",
    "pipeline_class",
]

logger = logging.getLogger(__name__)

#: Families of diffusion transformers this backbone runs, by the pipeline class that holds them.
MMDIT_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
#: The family of the proving-ground diffusion transformer (a folder with ``TRAINING.json``).
TOY_FAMILY = "toy-mmdit"
#: The guidance value given to guidance-distilled FLUX transformers (FluxPipeline's default).
FLUX_GUIDANCE = 3.5


def pipeline_class(folder: str | Path) -> str | None:
    """The pipeline class a diffusers folder's ``model_index.json`` names, or None."""
    import json

    try:
        return str(json.loads((Path(folder) / "model_index.json").read_text())["_class_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_pipeline_folder(folder: str | Path, drop_t5: bool = False) -> str:
    """The pipeline class of `folder`, checked to be one of `MMDIT_FAMILIES` (and, with
    `drop_t5`, an SD3 one).

    Raises:
        ValueError: naming `folder`, if it holds no supported pipeline; naming `drop_t5` for a
            FLUX pipeline (its only prompt encoder is T5).
    """
    found = pipeline_class(folder)
    if found is None:
        raise ValueError(f"`folder` {folder} is not a diffusers pipeline folder (no readable model_index.json).")
    if found not in MMDIT_FAMILIES:
        raise ValueError(
            f"`folder` {folder} holds a {found}; diffusion transformers supported: {', '.join(MMDIT_FAMILIES)}."
        )
    if drop_t5 and found != "StableDiffusion3Pipeline":
        raise ValueError(f"`drop_t5` applies to SD3 pipelines; {folder} holds a {found}.")
    return found


def mmdit_family(transformer: Any) -> str:
    """ "sd3", "sd35" (SD3 blocks with dual attention or q/k norms) or "flux".

    Raises:
        ValueError: naming the transformer's class and the supported ones.
    """
    name = type(transformer).__name__
    if name == "FluxTransformer2DModel":
        return "flux"
    if name == "SD3Transformer2DModel":
        config = transformer.config
        return "sd35" if config.get("dual_attention_layers") or config.get("qk_norm") else "sd3"
    raise ValueError(
        f"a {name} is not a diffusion transformer this backbone runs; supported: SD3Transformer2DModel "
        "(SD3, SD3.5) and FluxTransformer2DModel (FLUX.1)."
    )


class MMDiTBackbone:
    """An SD3 / SD3.5 / FLUX pipeline's parts, ready to record features.

    Args:
        pipe: a ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (its text encoders may be None
            where the pipeline allows it, e.g. SD3 without T5).
        name: what results call the model (default: the pipeline's class name).
        family: the family that selects method presets; None = the architecture ("sd3", "sd35",
            "flux"). `from_pretrained` sets "toy-mmdit" for the proving-ground model.

    Attributes:
        architecture: "sd3", "sd35" or "flux" (`mmdit_family`): what the code paths follow.
        family: what the presets follow (`architecture` or "toy-mmdit").

    Raises:
        ValueError: a pipeline whose transformer is not one of `MMDIT_FAMILIES`.
    """

    def __init__(self, pipe: Any, name: str | None = None, family: str | None = None) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.architecture = mmdit_family(self.transformer)
        self.family = family or self.architecture
        self.name = name or type(pipe).__name__

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        torch_dtype: torch.dtype | None = None,
        drop_t5: bool = False,
        transformer: Any | None = None,
    ) -> MMDiTBackbone:
        """Load a diffusers SD3 or FLUX pipeline folder.

        Args:
            folder: the pipeline folder (``model_index.json`` naming its pipeline class).
            torch_dtype: weight dtype (default float32).
            drop_t5: SD3 only: leave the T5 encoder out (its text tokens become zeros, as the
                pipeline does without it), saving its memory (about 9 GB in fp16 for SD3).
            transformer: a transformer already loaded (e.g. from a single file,
                `single_file_mmdit`), used instead of the folder's; the folder then needs only
                ``transformer/config.json``, no transformer weights.

        Returns:
            The backbone over the loaded pipeline, named after `folder`.

        Raises:
            ValueError: naming `folder`, if it holds no supported pipeline; naming `drop_t5`
                for a FLUX pipeline (its only prompt encoder is T5).
        """
        import diffusers

        found = check_pipeline_folder(folder, drop_t5)
        extra: dict[str, Any] = {}
        if drop_t5:
            extra = {"text_encoder_3": None}  # the tokenizer stays: it says how many zero tokens
        if transformer is not None:
            extra["transformer"] = transformer
        if torch_dtype is not None:  # as stored (usually float32) otherwise, as `loading.load_folder`
            extra["torch_dtype"] = torch_dtype
        pipe = getattr(diffusers, found).from_pretrained(str(folder), **extra)
        family = TOY_FAMILY if (Path(folder) / "TRAINING.json").is_file() else None
        return cls(pipe, name=str(folder), family=family)

    # ------------------------------------------------------------------ device / sizes
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> MMDiTBackbone:
        """Move the pipeline to `device` / `dtype` (in place); returns self."""
        self.pipe.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def prompt_tokenizer(self) -> Any:
        """The tokenizer of the text axis's first part (SD3: CLIP, FLUX: T5): its token
        positions are the columns of ``cross_attention`` maps (`text_parts`)."""
        return first_tokenizer(self.pipe, self.architecture)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> int:
        """Latent pixels per token side (FLUX packs 2x2 latents into one token)."""
        return 2 if self.architecture == "flux" else int(self.transformer.config.patch_size)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: VAE factor x patch size."""
        return self.vae_scale_factor * self.patch_size

    @property
    def native_size(self) -> int:
        """The pipeline's default input side (its ``default_sample_size`` latents: SD3 the
        transformer's ``sample_size``, FLUX 128, i.e. 1024 px)."""
        return int(self.pipe.default_sample_size) * self.vae_scale_factor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def layers(self) -> list[str]:
        """The transformer's attention layer paths in call order (`joint_layers`)."""
        return joint_layers(self.transformer)

    @functools.cached_property
    def layer_map(self) -> LayerMap:
        """Where the features are, by role (`mmdit_layers.mmdit_layer_map`)."""
        return mmdit_layer_map(self.transformer, self.patch_size)

    def joint_request(self, request: FeatureRequest) -> JointRequest | None:
        """The joint-attention layers `request` names on this model (`mmdit_layers.joint_request`)."""
        return joint_request(self.layer_map, request, self.architecture)

    def record_bytes(self, request: FeatureRequest, model_size: tuple[int, int], rows: int = 1) -> int:
        """Bytes of float32 maps that recording `request` for `rows` images of model input
        `model_size` (H, W) keeps (`joint_attention.recording_bytes`) plus its block outputs."""
        h, w = (s // self.size_multiple for s in model_size)
        n = h * w
        joint = self.joint_request(request)
        text = t5_length(self.pipe, self.architecture) + (
            0 if self.architecture == "flux" else self.pipe.tokenizer_max_length
        )
        heads = int(self.transformer.config.num_attention_heads)
        kept = recording_bytes(n, text, joint, rows, heads) if joint is not None else 0
        width = heads * int(self.transformer.config.attention_head_dim)
        return kept + 4 * rows * n * width * len(request.hidden_states)

    @property
    def max_size(self) -> int | None:
        """The largest input side an SD3 transformer's position grid covers
        (``pos_embed_max_size`` tokens x `size_multiple`: 1536 px on SD3 / SD3.5), None for FLUX
        (rotary positions, no limit)."""
        grid = None if self.architecture == "flux" else self.transformer.config.get("pos_embed_max_size")
        return int(grid) * self.size_multiple if grid else None

    def check_size(self, image_size: int) -> int:
        """`image_size`, checked against `size_multiple` and `max_size`.

        Raises:
            ValueError: naming `image_size` and the two nearest sizes that fit, or the largest.
        """
        if self.max_size is not None and image_size > self.max_size:
            raise ValueError(
                f"`image_size` {image_size} is larger than this model's position grid covers: at most "
                f"{self.max_size} ({self.max_size // self.size_multiple} tokens of {self.size_multiple} px)."
            )
        m = self.size_multiple
        if image_size % m:
            below, above = max(m, image_size // m * m), (image_size // m + 1) * m
            raise ValueError(
                f"`image_size` {image_size} is not a multiple of {m} (VAE factor {self.vae_scale_factor} x "
                f"patch {self.patch_size}); the nearest that fit are {below} and {above}."
            )
        return image_size

    # ------------------------------------------------------------------ encoders
    def preprocess(
        self,
        images: Sequence[ImageInput],
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """(B, 3, h, w) float32 pixels in [0, 1] and one meta dict per image (see
        `diffuseg.imageio.preprocess`); `image_size` None = `native_size`."""
        size = self.check_size(image_size or self.native_size)
        tensors, metas = preprocess(list(images), size, resize_mode, self.size_multiple, min_side=self.size_multiple)
        return stack_batch(tensors), metas

    @torch.no_grad()
    def encode_images(
        self,
        pixels: torch.Tensor,
        sample: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, H/f, W/f) latents, ``(z - shift) * scale``, from the
        posterior mean or a draw (`sample`, with `generator`: one, or one per image)."""
        return vae_latents(self.vae, pixels, sample, generator, self.device, self.dtype)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """Flow matching's noised latent at `timestep` (SD's scale, `noise_levels`): sigma * noise +
        (1 - sigma) * latents, sigma = `noise_levels.flow_sigma` (the SNR of SD's t)."""
        sigma = flow_sigma(timestep)
        return sigma * noise + (1.0 - sigma) * latents

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], token_weights: Sequence[Sequence[tuple[int, float]]] | None = None
    ) -> PromptEmbeddings:
        """The pipeline's prompt encoding: embeds (B, T, C) over the whole text axis (T =
        `text_parts`' columns), the pooled embedding (B, P), and the token ids and strings of the
        text axis's first part (SD3: CLIP, FLUX: T5), whose positions are the first columns of
        every image->text map (`prompt_tokenizer` finds class names there).

        `token_weights`: per prompt, (position, weight) pairs on the first part's tokens; a
        weighted token's embedding e becomes ``e0 + w * (e - e0)``, e0 the empty prompt's at that
        column (Compel's weighting, as `DiffusionBackbone.encode_prompts`); the pooled embedding
        and the other parts are unchanged.

        Raises:
            ValueError: if `token_weights` does not have one entry per prompt or a position is
                outside the first part.
        """
        return encode_weighted(
            self._encode, prompts, token_weights, columns=first_part_length(self.pipe, self.architecture)
        )

    def _encode(self, prompts: list[str]) -> PromptEmbeddings:
        """The pipeline's encoding of `prompts` (see `encode_prompts`)."""
        embeds, pooled, ids, tokens = encode(self.pipe, self.architecture, prompts, self.device)
        return PromptEmbeddings(embeds.to(self.dtype), pooled.to(self.dtype), ids, tokens)

    def text_parts(self, prompt: str) -> list[TextPart]:
        """The parts of `prompt`'s text axis (`mmdit_text.text_parts`)."""
        return text_parts(self.pipe, self.architecture, prompt)

    def check_timestep(self, timestep: int) -> int:
        """Raises ValueError naming `timestep` outside [0, `num_train_timesteps`)."""
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"`timestep` must be an int in [0, {self.num_train_timesteps}), got {timestep!r}.")
        return timestep

    # ------------------------------------------------------------------ the pass
    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """What `predict` returns for clean `latents` noised by `add_noise` with `noise`: the flow
        velocity ``noise - latents`` (the flow-matching training target), (B, C, h, w)."""
        return noise - latents

    @torch.no_grad()
    def predict(
        self, latents: torch.Tensor, timestep: int, prompt: PromptEmbeddings, image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """One transformer call on (B, C, h, w) latents at `timestep` (training scale),
        conditioned on `prompt`'s B rows; returns the flow velocity (B, C, h, w). `image_size` is
        not needed (an MM-DiT has no size conditioning)."""
        b, c, h, w = latents.shape
        embeds, pooled = prompt.embeds, prompt.pooled
        sigma = torch.full((b,), flow_sigma(timestep), device=self.device, dtype=self.dtype)
        if self.architecture != "flux":
            out = self.transformer(
                hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma * 1000
            )
            return out.sample
        packed = self.pipe._pack_latents(latents, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)  # FluxPipeline's
        guidance = None
        if self.transformer.config.get("guidance_embeds"):
            guidance = torch.full((b,), FLUX_GUIDANCE, device=self.device, dtype=self.dtype)
        out = self.transformer(
            hidden_states=packed, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma,
            img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
        ).sample  # fmt: skip
        f = self.vae_scale_factor
        return self.pipe._unpack_latents(out, h * f, w * f, f)

    @torch.no_grad()
    def extract(
        self,
        images: ImageInput | Sequence[ImageInput] | torch.Tensor,
        request: FeatureRequest | JointRequest,
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
        """One transformer pass over a batch, recording `request` (`DiffusionBackbone.extract`'s
        arguments and meaning).

        Args:
            images: one image or a list (paths, PIL, arrays, (3, H, W) tensors in [0, 1]), or a
                (B, 3, H, W) float tensor in [0, 1] already at model size.
            request: a `FeatureRequest` (translated by `joint_request`; its ``hidden_states``
                are block paths of `layer_map`'s ``decoder_outputs``) or a `JointRequest`.
            prompts: one prompt for all rows, or one per row (B * `prompts_per_image`).
            timestep: on the training scale [0, `num_train_timesteps`).
            image_size, resize_mode: preprocessing; `image_size` None = `native_size`.
            add_noise: noise the latent to `timestep` (flow matching; `add_noise`).
            shared_noise: one noise draw for the batch instead of one per image.
            latent_mode: VAE posterior "mean" or "sample".
            generator: one generator, or one per image.
            prompts_per_image: P prompt rows per image (image-major).
            token_weights: not supported on diffusion transformers yet (must be None).

        Returns:
            `Features` with B * P rows: per layer ``self_attention`` (rows, N, N) and
            ``cross_attention`` (rows, N, T), float32, on the (h, w) token grid
            (``layer_sizes``); ``hidden_states[block]`` the block's image tokens (rows, C, h, w);
            ``text_parts`` each row's `text_parts` (the columns of T by encoder).
        """
        self.check_timestep(timestep)
        pixels, metas = model_input(images, lambda b: self.preprocess(b, image_size, resize_mode), self.size_multiple)
        b = pixels.shape[0]
        prompt_list = prompt_rows(prompts, b, prompts_per_image)
        latents, pixels, metas = latent_rows(
            self, pixels, metas, timestep=timestep, latent_mode=latent_mode, add_noise=add_noise,
            shared_noise=shared_noise, generator=generator, prompts_per_image=prompts_per_image,
        )  # fmt: skip
        joint = request if isinstance(request, JointRequest) else self.joint_request(request)
        blocks = () if isinstance(request, JointRequest) else request.hidden_states
        grid = (latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size)
        prompt = self.encode_prompts(prompt_list, token_weights)
        features = Features(
            images=pixels, prompts=prompt_list, latent_size=(int(latents.shape[-2]), int(latents.shape[-1])),
            timestep=timestep, meta=metas, tokenizer=self.prompt_tokenizer, token_ids=prompt.token_ids,
            tokens=prompt.tokens, layer_map=self.layer_map, text_parts=[tuple(self.text_parts(p)) for p in prompt_list],
            normalization=joint.text_normalization if joint is not None else "softmax",
        )  # fmt: skip
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(record_joint(self.transformer, joint)) if joint is not None else None
            outputs = stack.enter_context(block_outputs(self.transformer, blocks, grid))
            self.predict(latents, timestep, prompt)
        if store is not None:
            features.self_attention.update(store.image_to_image)
            features.cross_attention.update(store.image_to_text)
        features.hidden_states.update(outputs)
        for key in (*features.self_attention, *features.cross_attention):
            features.layer_sizes[key], features.layer_counts[key] = grid, 1
        return features
