"""Seg-diffusion: a fine-tuned diffusion model that denoises one mask per class.

QuantumScriptHub/Seg-diffusion@7e5e3c1 fine-tunes an SD 2 UNet, Marigold-style, to denoise a
mask latent conditioned on the image latent (``cat[z_image, z_mask]`` at the UNet's input) and
text. diffuseg's version (`diffuseg.segdiffusion`): `conv_in` widened by duplicating and halving
the pretrained weights (the reference re-initialises it randomly), one binary mask per class with
that class's prompt "a photo of a {class}" (the reference averages all classes' embeddings into
one gray map and has no way back from gray levels to classes), DDIM with N steps over an
ensemble of E samples per class, all (class, member) pairs of an image in one batch, and the
label map as the argmax over classes of the decoded mask probabilities (a "background" class
gets `background_threshold`). DDIM runs with "trailing" timesteps, so its first step sees pure
noise at the noise level it belongs to; the reference's SD 2 scheduler ("leading") starts 10
steps at t = 901 (``timestep_spacing="leading"`` reproduces it).

The model is the user's checkpoint (resource ``checkpoint``: a folder made by the trainer); on the
toy model the checkpoint trained in the proving-ground run ships with the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..backbone.features import Features
from ..labeling.spans import class_prompt
from ..labeling.vocabulary import background_index, name_rows
from ..ops.masks import argmax0, class_scores, mean_score_per_label
from ..plan import Pass, Query
from ..segdiffusion.base import require_unet
from ..segdiffusion.sampler import PROBABILITIES, SegDiffusionSampler
from ..types import Segmentation
from .segdiffusion_config import CHECKPOINT, INFO, TIMESTEP_SPACINGS, SegDiffusionConfig
from .spec import MethodSpec

__all__ = ["SegDiffusionConfig", "TIMESTEP_SPACINGS", "CHECKPOINT", "plan", "segment", "SPEC"]


def plan(config: SegDiffusionConfig, query: Query, backbone: Any = None, resources: Any = None) -> Pass:
    """One sampler pass per image: one prompt per class name, E samples each."""
    rows = name_rows(query.classes)
    if not rows:
        raise ValueError(
            "`classes` must name at least one class other than 'background' for Seg-diffusion "
            f"(got {query.class_names or 'none'})."
        )
    if backbone is None:
        raise ValueError("Seg-diffusion plans its prompts with the backbone's tokenizer; got `backbone=None`.")
    require_unet(backbone)  # a diffusion transformer is refused here, before any image
    tokenizer = backbone.prompt_tokenizer
    prompts = tuple(class_prompt(tokenizer, config.template, name) for _, name in rows)
    return Pass.for_query(
        query,
        config.image_size,
        prompts=prompts,
        sampler=SegDiffusionSampler(config.steps, config.ensemble, CHECKPOINT.name, config.timestep_spacing),
    )


def score_maps(
    features: Features,
    config: SegDiffusionConfig = SegDiffusionConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The class scores `segment` labels by: (K, H, W) float32 at the model input size, each
    name's sampled mask probability in [0, 1] (a class the best of its names), the background
    class the constant `config.background_threshold`."""
    if query is None:
        raise ValueError("Seg-diffusion's `segment` needs the `query` its pass was planned for.")
    rows = name_rows(query.classes)
    probs = features.hidden_states.get(PROBABILITIES)
    if probs is None or probs.shape[0] != len(rows):
        raise ValueError("`features` lacks one sampled mask per class name; run Seg-diffusion's plan.")
    probs = probs[:, 0]
    size = features.image_size
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    k = len(query.classes)
    return class_scores(probs, [c for c, _ in rows], k, background_index(query.classes), config.background_threshold)


def segment(
    features: Features,
    config: SegDiffusionConfig = SegDiffusionConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Labels from the sampled mask probabilities: argmax over classes (synonyms by max).

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size indexing
        `query.classes`, `names`, `scores` (K,) = each class's mean probability over its pixels
        and extras["class_scores"] (K, H, W).
    """
    scores = score_maps(features, config, query, resources)
    labels = argmax0(scores)
    per_class = mean_score_per_label(scores, labels)
    return Segmentation(labels=labels, names=list(query.class_names), scores=per_class, extras={"class_scores": scores})


SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    needs_classes=True,
    score_maps=score_maps,
)
