"""Seg-diffusion inference: DDIM over the mask latent of every (class, ensemble member) pair of
an image in one batch, conditioned on the image latent and the class prompt.

Per image: the image latent (VAE mean), the class prompts' text states, a mask latent per
(class, member) drawn from the caller's generator, N DDIM steps of the mask UNet on
``cat[z_image, z_mask]``, the VAE decodes every mask, and each class's members are averaged.
The reference (``semantic_pipeline.py``) runs the members one by one, averages the *mean text
embedding of all classes* into one gray map, and aligns members with Marigold's affine-invariant
ensembling: diffuseg has one binary mask per class, so members are averaged directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..backbone.features import Features
from ..ops.noise import per_item_generators
from .base import require_unet
from .masks import decode_masks

if TYPE_CHECKING:
    from ..backbone.backbone import DiffusionBackbone
    from ..backbone.protocol import Backbone

__all__ = ["MaskModel", "SegDiffusionSampler", "PROBABILITIES"]

#: The `Features.hidden_states` key of the sampled mask probabilities, (rows, 1, H, W).
PROBABILITIES = "segdiffusion.probabilities"


@dataclass
class MaskModel:
    """A loaded Seg-diffusion checkpoint: the widened UNet, its JSON record and where it came
    from (a folder, for error messages; None for a model built in memory)."""

    unet: Any
    record: dict[str, Any]
    source: str | None = None

    def check_fits(self, backbone: DiffusionBackbone) -> None:
        """Raise `ValueError` (naming the checkpoint and what was expected) if this mask UNet
        cannot run on `backbone`: not a UNet model (`require_unet`), other latent channels, text
        width, added conditioning or prediction type."""
        require_unet(backbone)
        where = self.source or "the Seg-diffusion checkpoint"
        cfg, base = self.unet.config, backbone.unet.config
        problems = []
        if cfg.in_channels != 2 * base.in_channels:
            problems.append(
                f"it reads {cfg.in_channels} latent channels, the base model's VAE gives {base.in_channels} (x2)"
            )
        if cfg.cross_attention_dim != base.cross_attention_dim:
            problems.append(f"its text width is {cfg.cross_attention_dim}, the base model's {base.cross_attention_dim}")
        if cfg.get("addition_embed_type") != base.get("addition_embed_type"):
            problems.append(
                f"its added conditioning is {cfg.get('addition_embed_type')!r}, "
                f"the base model's {base.get('addition_embed_type')!r}"
            )
        kind = self.record.get("prediction_type")
        if kind is not None and kind != backbone.scheduler.config.prediction_type:
            problems.append(
                f"it was trained for {kind!r} prediction, the base model's scheduler predicts "
                f"{backbone.scheduler.config.prediction_type!r}"
            )
        if problems:
            trained = self.record.get("base_model")
            raise ValueError(
                f"{where} does not fit the base model {backbone.name!r}"
                + (f" (it was trained from {trained!r})" if trained else "")
                + ": "
                + "; ".join(problems)
                + "."
            )


@dataclass(frozen=True)
class SegDiffusionSampler:
    """The sampler of a Seg-diffusion `Pass` (hashable: batched and cached by value).

    Attributes:
        steps: DDIM steps (the reference pipeline's ``denoising_steps=10``).
        ensemble: samples per class, averaged (``ensemble_size=10``).
        resource: the name of the `MaskModel` in the resources.
        timestep_spacing: DDIM's timesteps: "trailing" (the first step at T - 1, where the
            sampler's pure noise belongs) or "leading" (the SD schedulers' setting that the
            reference inherits: with 10 steps the first is t = 901, so pure noise is treated as
            a less noisy latent; Garcia et al., "Fine-Tuning Image-Conditional Diffusion Models
            is Easier than You Think", 2024, identified this for Marigold).
    """

    steps: int = 10
    ensemble: int = 10
    resource: str = "checkpoint"
    timestep_spacing: str = "trailing"

    @torch.no_grad()
    def __call__(
        self, backbone: Backbone, pixels: torch.Tensor, pass_: Any, resources: dict[str, Any], generator: Any
    ) -> Features:
        """Sample the mask probabilities of every prompt of every image.

        Args:
            backbone: the base model; a UNet model (`require_unet`).
            pixels: (B, 3, H, W) float32 in [0, 1] at the model input size.
            pass_: the `Pass`; its P prompts are the class prompts of each image.

        Returns:
            `Features` with B * P rows (image-major): hidden_states[PROBABILITIES] (B*P, 1, H, W)
            float32 in [0, 1], the mean over the ensemble of the decoded masks.

        Raises:
            ValueError: on a backbone that is not a UNet model, a missing checkpoint, or one that
                does not fit the backbone.
        """
        from diffusers import DDIMScheduler

        backbone = require_unet(backbone)
        model = resources.get(self.resource)
        if not isinstance(model, MaskModel):
            raise ValueError(f"Seg-diffusion needs its checkpoint in `resources[{self.resource!r}]` (a MaskModel).")
        model.check_fits(backbone)
        unet = model.unet
        scheduler = DDIMScheduler.from_config(backbone.scheduler.config, timestep_spacing=self.timestep_spacing)
        scheduler.set_timesteps(self.steps, device=backbone.device)
        prompts = list(pass_.prompts)
        p, e = len(prompts), self.ensemble
        text = backbone.encode_prompts(prompts)
        embeds = text.embeds.to(unet.dtype).repeat_interleave(e, 0)  # (P*E, T, D)
        added = backbone.added_cond(text, tuple(pixels.shape[-2:]))
        if added is not None:
            added = {k: v.to(unet.dtype).repeat_interleave(e, 0) for k, v in added.items()}
        image_latents = backbone.encode_images(pixels, "mean").to(unet.dtype)  # (B, C, h, w)
        out = []
        per_image = per_item_generators(generator, len(image_latents)) or [generator] * len(image_latents)
        for z_image, gen in zip(image_latents, per_image, strict=True):  # a list: each image's own generator
            cond = z_image[None].expand(p * e, -1, -1, -1)
            shape = (p * e, *z_image.shape)
            gen_device = gen.device if gen is not None else torch.device("cpu")
            z = torch.randn(shape, generator=gen, device=gen_device).to(backbone.device, unet.dtype)
            for t in scheduler.timesteps:
                pred = unet(torch.cat([cond, z], 1), t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
                z = scheduler.step(pred, t, z).prev_sample
            probs = decode_masks(backbone, z)  # (P*E, H, W)
            out.append(probs.view(p, e, *probs.shape[-2:]).mean(1))
        probabilities = torch.cat(out)[:, None].float().cpu()  # (B*P, 1, H, W)
        b = pixels.shape[0]
        return Features(
            hidden_states={PROBABILITIES: probabilities},
            images=pixels.repeat_interleave(p, 0).cpu(),
            prompts=prompts * b,
            token_ids=text.token_ids.repeat(b, 1),
            tokens=text.tokens * b,
            tokenizer=backbone.prompt_tokenizer,
            latent_size=tuple(image_latents.shape[-2:]),
            timestep=0,
            meta=[{} for _ in range(b * p)],
        )
