"""`MMDiTBackbone`: a diffusion transformer (SD3, SD3.5, FLUX.1) as a source of recorded features.

The counterpart of `DiffusionBackbone` for MM-DiT pipelines: it preprocesses images, VAE-encodes
them, noises the latent the flow-matching way, encodes prompts with the pipeline's own
``encode_prompt`` (so the text tokens are in the model's order: SD3's 77 CLIP tokens then its T5
tokens, FLUX's T5 tokens), runs the transformer once and returns what `joint_attention`
recorded as `Features`: per requested layer, ``self_attention[layer]`` is the image→image block
(B, N, N), rows re-normalised over image keys, and ``cross_attention[layer]`` the image→text
block (B, N, T), with ``layer_sizes[layer]`` the (h, w) token grid.

Conventions (reference: ``mmdit_and_fast_ncut.md`` §A.0):

* timesteps are given on the training scale [0, 1000) as for a UNet; sigma = t / 1000, and a
  real image is noised as ``sigma * noise + (1 - sigma) * x`` (the flow-matching scheduler's
  ``scale_noise``). SD3's transformer takes sigma * 1000; FLUX's takes sigma (it multiplies by
  1000 inside) and, on guidance-distilled checkpoints (FLUX-dev), a guidance value
  (`FLUX_GUIDANCE`, the pipeline's default 3.5).
* FLUX packs 2x2 latent patches into one token; SD3 patchifies inside the transformer. Either
  way an input side must be a multiple of `size_multiple` (VAE factor x patch size).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..imageio import ImageInput, preprocess, stack_batch
from ..ops.noise import batch_noise, per_item_generators
from .features import Features
from .joint_attention import JointRequest, joint_layers, record_joint

__all__ = ["MMDiTBackbone", "MMDIT_FAMILIES", "FLUX_GUIDANCE", "TextPart", "mmdit_family"]

logger = logging.getLogger(__name__)

#: Families of diffusion transformers this backbone runs, by the pipeline class that holds them.
MMDIT_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
#: The guidance value given to guidance-distilled FLUX transformers (FluxPipeline's default).
FLUX_GUIDANCE = 3.5
#: T5 tokens per prompt, by family: the pipelines' ``max_sequence_length`` defaults
#: (`StableDiffusion3Pipeline.encode_prompt` 256, `FluxPipeline.encode_prompt` 512).
T5_TOKENS = {"sd3": 256, "sd35": 256, "flux": 512}


@dataclasses.dataclass(frozen=True)
class TextPart:
    """One text encoder's share of the joint text axis of a prompt.

    Attributes:
        encoder: "clip" (SD3's CLIP-L / CLIP-G tokens, one column each) or "t5".
        offset: the first column of this part on the text axis (T) of `Features.cross_attention`.
        token_ids: the ids the encoder saw (BOS, padding included): column ``offset + i`` is
            token ``token_ids[i]``.
        tokenizer: the tokenizer that produced them.
    """

    encoder: str
    offset: int
    token_ids: tuple[int, ...]
    tokenizer: Any = dataclasses.field(compare=False, repr=False)


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

    Raises:
        ValueError: a pipeline whose transformer is not one of `MMDIT_FAMILIES`.
    """

    def __init__(self, pipe: Any, name: str | None = None) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.family = mmdit_family(self.transformer)
        self.name = name or type(pipe).__name__

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, torch_dtype: torch.dtype | None = None, drop_t5: bool = False
    ) -> MMDiTBackbone:
        """Load a diffusers SD3 or FLUX pipeline folder.

        Args:
            folder: the pipeline folder (``model_index.json`` naming its pipeline class).
            torch_dtype: weight dtype (default float32).
            drop_t5: SD3 only: leave the T5 encoder out (its text tokens become zeros, as the
                pipeline does without it), saving its memory (about 9 GB in fp16 for SD3).

        Raises:
            ValueError: naming `folder`, if it holds no supported pipeline; naming `drop_t5`
                for a FLUX pipeline (its only prompt encoder is T5).
        """
        import json

        import diffusers

        index = Path(folder) / "model_index.json"
        try:
            pipeline_class = json.loads(index.read_text())["_class_name"]
        except (OSError, ValueError, KeyError):
            raise ValueError(f"`folder` {folder} is not a diffusers pipeline folder (no readable {index}).") from None
        if pipeline_class not in MMDIT_FAMILIES:
            raise ValueError(
                f"`folder` {folder} holds a {pipeline_class}; diffusion transformers supported: "
                f"{', '.join(MMDIT_FAMILIES)}."
            )
        extra: dict[str, Any] = {}
        if drop_t5:
            if pipeline_class != "StableDiffusion3Pipeline":
                raise ValueError(f"`drop_t5` applies to SD3 pipelines; {folder} holds a {pipeline_class}.")
            extra = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = getattr(diffusers, pipeline_class).from_pretrained(
            str(folder), torch_dtype=torch_dtype or torch.float32, **extra
        )
        return cls(pipe, name=str(folder))

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
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> int:
        """Latent pixels per token side (FLUX packs 2x2 latents into one token)."""
        return 2 if self.family == "flux" else int(self.transformer.config.patch_size)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: VAE factor x patch size."""
        return self.vae_scale_factor * self.patch_size

    @property
    def native_size(self) -> int:
        """The input side the transformer was configured for (its ``sample_size`` latents)."""
        return int(self.transformer.config.sample_size) * self.vae_scale_factor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def layers(self) -> list[str]:
        """The transformer's attention layer paths in call order (`joint_layers`)."""
        return joint_layers(self.transformer)

    def check_size(self, image_size: int) -> int:
        """`image_size`, checked against `size_multiple`.

        Raises:
            ValueError: naming `image_size` and the two nearest sizes that fit.
        """
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
        resize_mode: Literal["crop", "squash", "keep_aspect"] = "crop",
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """(B, 3, h, w) float32 pixels in [0, 1] and one meta dict per image (see
        `diffuseg.imageio.preprocess`); `image_size` None = `native_size`."""
        size = self.check_size(image_size or self.native_size)
        tensors, metas = preprocess(list(images), size, resize_mode, self.size_multiple, min_side=self.size_multiple)
        return stack_batch(tensors), metas

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, H/f, W/f) latents, ``(z - shift) * scale`` (posterior mean)."""
        vae_dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(pixels.to(self.device, vae_dtype) * 2 - 1).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """Flow matching's noised latent at `timestep` (training scale): sigma * noise +
        (1 - sigma) * latents, sigma = timestep / `num_train_timesteps`."""
        sigma = timestep / self.num_train_timesteps
        return sigma * noise + (1.0 - sigma) * latents

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The pipeline's prompt encoding: (embeds (B, T, C), pooled (B, P), extra transformer
        arguments: FLUX's ``txt_ids``). T = `text_parts`' columns."""
        prompts = list(prompts)
        t5 = T5_TOKENS[self.family]
        if self.family == "flux":
            embeds, pooled, text_ids = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=t5
            )
            return embeds, pooled, {"txt_ids": text_ids}
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=t5,
        )  # fmt: skip
        return embeds, pooled, {}

    def text_parts(self, prompt: str) -> list[TextPart]:
        """The parts of `prompt`'s text axis, as `encode_prompts` builds it: SD3 / SD3.5: the
        CLIP tokens (both CLIP encoders share the columns) then the T5 tokens (zeros, and left out
        here, when the pipeline has no T5 encoder); FLUX: the T5 tokens."""
        pipe, t5 = self.pipe, T5_TOKENS[self.family]
        if self.family == "flux":
            return [TextPart("t5", 0, self._ids(pipe.tokenizer_2, prompt, t5), pipe.tokenizer_2)]
        clip = pipe.tokenizer_max_length
        parts = [TextPart("clip", 0, self._ids(pipe.tokenizer, prompt, clip), pipe.tokenizer)]
        if pipe.text_encoder_3 is not None:
            parts.append(TextPart("t5", clip, self._ids(pipe.tokenizer_3, prompt, t5), pipe.tokenizer_3))
        return parts

    @staticmethod
    def _ids(tokenizer: Any, prompt: str, length: int) -> tuple[int, ...]:
        ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
        return tuple(int(i) for i in ids)

    def check_timestep(self, timestep: int) -> int:
        """Raises ValueError naming `timestep` outside [0, `num_train_timesteps`)."""
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"`timestep` must be an int in [0, {self.num_train_timesteps}), got {timestep!r}.")
        return timestep

    # ------------------------------------------------------------------ the pass
    @torch.no_grad()
    def predict(
        self, latents: torch.Tensor, timestep: int, embeds: torch.Tensor, pooled: torch.Tensor, **extra: Any
    ) -> torch.Tensor:
        """One transformer call on (B, C, h, w) latents at `timestep` (training scale); returns
        the model's prediction (B, C, h, w) (the flow velocity)."""
        b, c, h, w = latents.shape
        sigma = torch.full((b,), timestep / self.num_train_timesteps, device=self.device, dtype=self.dtype)
        if self.family != "flux":
            out = self.transformer(
                hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma * 1000
            )
            return out.sample
        packed = self.pipe._pack_latents(latents, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        guidance = None
        if self.transformer.config.get("guidance_embeds"):
            guidance = torch.full((b,), FLUX_GUIDANCE, device=self.device, dtype=self.dtype)
        out = self.transformer(
            hidden_states=packed, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma,
            img_ids=img_ids, guidance=guidance, **extra,
        ).sample  # fmt: skip
        return self.pipe._unpack_latents(
            out, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
        )

    @torch.no_grad()
    def extract(
        self,
        images: ImageInput | Sequence[ImageInput],
        request: JointRequest,
        prompts: str | Sequence[str] = "",
        timestep: int = 300,
        *,
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect"] = "crop",
        add_noise: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Features:
        """One transformer pass over a batch, recording `request`.

        Args:
            images: one image or a list (paths, PIL, arrays, (3, H, W) tensors in [0, 1]).
            request: the layers and attention blocks to record (`JointRequest`).
            prompts: one prompt for all images, or one per image.
            timestep: on the training scale [0, `num_train_timesteps`).
            image_size, resize_mode: preprocessing; `image_size` None = `native_size`.
            add_noise: noise the latent to `timestep` (flow matching; `add_noise`).
            generator: one generator, or one per image.

        Returns:
            `Features`: per layer ``self_attention`` (B, N, N) and ``cross_attention`` (B, N, T),
            float32, ``layer_sizes`` the (h, w) token grid; `images`, `prompts`, `latent_size`,
            `timestep` and `meta` as for a UNet pass.
        """
        self.check_timestep(timestep)
        batch = [images] if not isinstance(images, (list, tuple)) else list(images)
        pixels, metas = self.preprocess(batch, image_size, resize_mode)
        b = pixels.shape[0]
        prompt_list = [prompts] * b if isinstance(prompts, str) else list(prompts)
        if len(prompt_list) != b:
            raise ValueError(f"`prompts` must be one prompt or one per image ({b}), got {len(prompt_list)}.")
        per_item_generators(generator, b)  # checked before any work
        latents = self.encode_images(pixels)
        if add_noise:
            noise = batch_noise(latents.shape, generator, self.device).to(latents.dtype)
            latents = self.add_noise(latents, noise, timestep)
        embeds, pooled, extra = self.encode_prompts(prompt_list)
        with record_joint(self.transformer, request) as store:
            self.predict(latents, timestep, embeds, pooled, **extra)
        grid = (latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size)
        return Features(
            self_attention=dict(store.image_to_image),
            cross_attention=dict(store.image_to_text),
            layer_sizes={layer: grid for layer in request.layers},
            layer_counts={layer: 1 for layer in request.layers},
            images=pixels,
            prompts=prompt_list,
            latent_size=(int(latents.shape[-2]), int(latents.shape[-1])),
            timestep=timestep,
            meta=metas,
        )
