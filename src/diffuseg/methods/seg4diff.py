"""Seg4Diff (unsupervised): segments from the image→text attention of an empty prompt.

Kim et al., "Seg4Diff: Unveiling Open-Vocabulary Segmentation in Text-to-Image Diffusion
Transformers", NeurIPS 2025 (arXiv 2509.18096); code cvlab-kaist/Seg4Diff at bb500ca
(``seg4diff/seg4diff_model_unsup.py``, ``seg4diff/modeling/backbone/sd3_backbone.py``).

One pass with the empty prompt on the noised latent records the head-averaged image→text
attention of one joint-attention layer, the paper's "semantic grounding expert" (SD3-medium layer
9: ``configs/eval_unsup.yaml`` ``ATTENTION_LAYERS: [9]``). The maps of the prompt's CLIP tokens
(BOS, EOS and padding; the code slices ``[:, :4096, 4096:4096 + 77]``, T5 tokens ignored) are
normalised per pixel, turned into spatial distributions and merged by symmetric KL below 0.1
(`diffuseg.ops.textmaps.text_token_proposals`), and each pixel takes the merged map that is
largest there. This is DiffSeg's merge applied to text-token maps: it is native to MM-DiTs, and
runs on a UNet's cross-attention too (any model whose layer map has image→text layers).

Timestep: the code noises to ``timesteps[-8]`` of a 28-step schedule (``NOISE_STEPS: 8``); with
SD3's flow-matching scheduler (shift 3) that is sigma 0.515, which is t = 372 on the SD scale a
method's timestep shares on every family (`backbone.noise_levels.sd_timestep(0.515)`; SD's DDPM
t = 372 has that signal-to-noise ratio), 372 here. Input: the
code resizes to 1024 x 1024, SD3's native size (`image_size` None = the model's native size).
Deviation: the code's T5 part is 77 tokens long (``max_sequence_length=77``); the backbone's is
the pipeline's default (256), which changes the CLIP columns' share of each softmax row only
through the T5 keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backbone.features import FeatureRequest, Features
from ..ops.masks import maps_to_labels
from ..ops.textmaps import text_token_proposals
from ..plan import Pass, Query
from ..types import Segmentation
from .seg4diff_config import INFO, Seg4DiffConfig
from .spec import MethodSpec

__all__ = ["Seg4DiffConfig", "PRESETS", "plan", "segment", "SPEC", "text_layer"]


#: Model family -> overrides: SD3(-medium)'s grounding layer from the paper's configs.
PRESETS: dict[str, dict[str, Any]] = {
    "sd3": {"layer": 9},
    "toy-mmdit": {"timestep": 300, "layer": 4},  # docs/mmdit_presets.md
}


def text_layer(layer: int | None, backbone: Any) -> str:
    """The path of image→text layer number `layer` (None: the middle one) of `backbone`.

    Raises:
        ValueError: naming `layer` and the valid range.
    """
    paths = [a.path for a in backbone.layer_map.layers("text")]
    if not paths:
        raise ValueError("this model records no image->text attention, which Seg4Diff reads.")
    index = len(paths) // 2 if layer is None else layer
    if not 0 <= index < len(paths):
        raise ValueError(f"`layer` {layer} is outside this model's image->text layers 0..{len(paths) - 1}.")
    return paths[index]


def plan(config: Seg4DiffConfig, query: Query, backbone: Any = None, resources: Any = None) -> Pass:
    """One pass with the empty prompt at `config.timestep` on the noised latent, recording one
    layer's image→text attention (every such layer in a dry plan without a backbone)."""
    layers = True if backbone is None else (text_layer(config.layer, backbone),)
    return Pass.for_query(
        query,
        config.image_size,
        request=FeatureRequest(cross_attention=layers, per_layer=True),
        timestep=config.timestep,
        prompts=("",),
        add_noise=True,
    )


def segment(
    features: Features,
    config: Seg4DiffConfig = Seg4DiffConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Segment one image from one layer's image→text maps of the empty prompt.

    Args:
        features: `Features` of one image from `plan`'s pass (one image→text layer).
        config: hyperparameters.
        query, resources: unused.

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size, one id per merged map.

    Raises:
        ValueError: if `features` does not hold one image's maps of one image→text layer.
    """
    if len(features.cross_attention) != 1 or features.batch_size != 1:
        raise ValueError(
            f"`features` must hold one image's image->text maps of one layer (Seg4Diff's plan), got "
            f"{len(features.cross_attention)} layer(s) for {features.batch_size} image(s)."
        )
    ((key, maps),) = features.cross_attention.items()
    first = features.token_ids.shape[1] if features.token_ids is not None else maps.shape[-1]  # the CLIP tokens
    proposals = text_token_proposals(maps[0, :, :first], features.layer_sizes[key], config.kl_threshold, config.power)
    labels = maps_to_labels(proposals, features.image_size).cpu()
    return Segmentation(labels=labels, extras={"proposals": proposals.cpu()})


SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    presets=PRESETS,
)
