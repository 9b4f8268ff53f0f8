"""MaskDiffusion: open-vocabulary and unsupervised segmentation from unnormalised cross-attention
and UNet decoder features, recorded in one pass.

Kawano & Aoki, "MaskDiffusion: Exploiting Pre-trained Diffusion Models for Semantic
Segmentation" (arXiv 2403.11194); reference Valkyrja3607/MaskDiffusion@1955c87
(``scripts/atten.py``, ``scripts/run.py``).

One UNet pass at t = 0 on the clean latent (VAE mean) with the prompt "cat and sofa and ...":

* **attention**: exp(QK^T / sqrt d) of each class's tokens (before the softmax over tokens, so
  classes do not compete) from the cross-attention layers of the two coarsest levels (16x16 and
  8x8 on SD 1.x at 512 px), averaged over heads and layers on a common grid and divided by each
  class's maximum (`diffuseg.ops.prototypes.unnormalised_class_maps`: computed from log maps, so
  float32 never overflows);
* **features**: outputs of UNet up blocks (default ``up_blocks.1`` and ``up_blocks.2``: 32x32 and
  64x64 at 512 px on SD 1.x), L2-normalised per pixel, resized to the finest and concatenated;
* ``maskdiffusion``: class prototypes ``p_c = sum f a_c / sum a_c`` and scores ``<f, p_c>``,
  argmax (a "background" class gets a constant score);
* ``maskdiffusion-kmeans``: k-means on the same features, K fixed (`k`) or chosen by the
  silhouette rule on the features (never the ground truth).

Presets (`presets` of each spec, by `DiffusionBackbone.family`; any setting overrides them), tuned
on 40 scenes of the proving ground's *test* split (``benchmarks/bench_proving_ground.py --tune``):

* ``toy``, ``maskdiffusion``: t = 300 and attention levels 1 and 2 (8x8 and 16x16, the grids of
  SD's two coarsest levels; the toy's own two coarsest are 4x4 and 8x8): mIoU 0.671 there
  against 0.489 with the reference's t = 0 and levels 0, 1.
* ``toy``, ``maskdiffusion-kmeans``: t = 500 at 128 px: 0.527 against 0.345 at t = 0, 64 px.
* ``sd3``, ``sd35``, ``flux``, ``maskdiffusion``: attention level 0, i.e. every joint attention
  layer (an MM-DiT has one token grid, hence one level; the reference's levels 0 and 1 do not
  exist there). No published layer choice for MaskDiffusion on these models; Seg4Diff's SD3
  grounding layer (``layers=(9,)``) and ConceptAttention's FLUX dual blocks 15-18
  (``layers=(15, 16, 17, 18)``) are the documented alternatives (docs/mmdit_presets.md).

Departures from the published code, on purpose:

* **Genuinely training-free features.** The reference's features come from ODISE's SD-1.3 with
  ODISE's *trained* projection heads and implicit captioner (``model_weights/feature_extractor.pth``,
  COCO-panoptic supervised); here they are the same backbone's raw decoder outputs.
* **One model, one pass**: the reference runs SD-1.4 for attention and ODISE's SD-1.3 for
  features; its 1-step "DDIM inversion" maps t=0 to t=0 (an identity), so one conditional pass at
  t=0 is what it computes (its unconditional CFG half is discarded; not run here).
* **Token spans by token ids** (multi-token names work); the reference takes every other token
  (``atten[:, 1:-1:2]``), so it renamed "traffic light" / "traffic sign" to "light" / "sign".
* **The image keeps its aspect ratio** (the reference squashes it to 512 x 512).
* **Which text**: on a diffusion transformer the class tokens are read in the first part of
  the text axis by default (SD3: its CLIP tokens; FLUX: T5); `text_encoders` ("t5", or
  ("clip", "t5"), a name's columns in both averaged) reads SD3's T5 tokens, the class list fitted to
  the T5 part's length (`labeling.spans.prompt_budget`, `text_columns`). The reference has a UNet
  and one CLIP encoder. ``maskdiffusion-kmeans`` reads no text.
* **K for k-means** is chosen by a rule on the features; the reference's K = the number of
  ground-truth labels (an oracle that even counts the ignore label) is available only as
  ``k_rule="query-classes"`` with ``diffuseg eval --classes gt-labels``, named as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..backbone.features import FeatureRequest, Features
from ..labeling.spans import joined_prompt, prompt_budget, text_columns
from ..labeling.vocabulary import background_index, name_rows
from ..ops.masks import argmax0, class_scores, mean_score_per_label
from ..ops.prototypes import feature_stack, prototype_scores, unnormalised_class_maps
from ..plan import Pass, Query
from ..types import Segmentation
from .maskdiffusion_config import (
    INFO,
    K_RULES,
    KMEANS_INFO,
    MaskDiffusionConfig,
    MaskDiffusionKMeansConfig,
    _PassSettings,
)
from .spec import MethodSpec

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone

__all__ = [
    "MaskDiffusionConfig",
    "MaskDiffusionKMeansConfig",
    "K_RULES",
    "PRESETS",
    "KMEANS_PRESETS",
    "SPEC",
    "KMEANS_SPEC",
]


# ----------------------------------------------------------------------------- planning


def _request(
    config: _PassSettings,
    backbone: Backbone | None,
    cross_levels: tuple[int, ...],
    cross_layers: tuple[int, ...] | None = None,
) -> FeatureRequest:
    """What both variants record, from `backbone.layer_map`: the outputs of the decoder blocks
    `config.feature_blocks` ((B, C, h, w) each) and, for each level index in `cross_levels`
    (0 = the coarsest), that level's text-attention maps as log unnormalised scores (or the
    maps `cross_layers` selects, when given).

    Raises:
        ValueError: without a backbone, or on a block or level index the model does not have.
    """
    if backbone is None:
        raise ValueError("MaskDiffusion plans its recording with the backbone; got `backbone=None`.")
    layers = backbone.layer_map
    n_up = len(layers.decoder_outputs)
    bad = [b for b in config.feature_blocks if b >= n_up]
    if bad:
        raise ValueError(
            f"`feature_blocks` {bad} do not exist: this model has feature blocks 0..{n_up - 1} "
            "(a UNet's up blocks, an MM-DiT's transformer blocks)."
        )
    hidden = tuple(layers.decoder_outputs[b] for b in config.feature_blocks)
    if cross_layers is not None:
        cross = layers.select("text", cross_layers)
        return FeatureRequest(cross_attention=cross, normalization="log", hidden_states=hidden)
    if not cross_levels:
        return FeatureRequest(hidden_states=hidden)
    levels = layers.levels("text")
    bad = [v for v in cross_levels if v >= len(levels)]
    if bad:
        raise ValueError(
            f"`attention_levels` {bad} do not exist: this model has cross-attention levels 0..{len(levels) - 1} "
            "(0 = the coarsest; an MM-DiT has one: choose its layers with `layers`)."
        )
    cross = tuple(name for v in cross_levels for name in levels[v])
    return FeatureRequest(cross_attention=cross, normalization="log", hidden_states=hidden)


def plan(config: MaskDiffusionConfig, query: Query, backbone: Backbone | None = None, resources: Any = None) -> Pass:
    """One pass at `timestep` on the clean latent with all class names in one prompt, recording
    the coarse levels' log unnormalised cross-attention and the up-block outputs."""
    rows = name_rows(query.classes)
    if not rows:
        raise ValueError(
            "`classes` must name at least one class other than 'background' for MaskDiffusion "
            f"(got {query.class_names or 'none'}); e.g. classes='road,car,sky'."
        )
    request = _request(config, backbone, config.attention_levels, config.layers)
    tokenizer, budget = prompt_budget(backbone, config.text_encoders)  # the parts the names are read in
    prompt = joined_prompt(tokenizer, config.template, [name for _, name in rows], budget=budget)
    return _pass(config, query, request, prompt)


def plan_kmeans(
    config: MaskDiffusionKMeansConfig, query: Query, backbone: Backbone | None = None, resources: Any = None
) -> Pass:
    """The same pass without class names: the up-block outputs under the empty prompt."""
    return _pass(config, query, _request(config, backbone, ()), "")


def _pass(config: _PassSettings, query: Query, request: FeatureRequest, prompt: str) -> Pass:
    return Pass.for_query(
        query,
        config.image_size,
        request=request,
        timestep=config.timestep,
        prompts=(prompt,),
        latent_mode=config.latent_mode,
    )


# ----------------------------------------------------------------------------- segmentation


def _features(features: Features, config: _PassSettings) -> torch.Tensor:
    """(C, h, w) unit-norm features on the finest recorded up-block grid."""
    if features.batch_size != 1:
        raise ValueError(f"`segment` takes the features of one image, got a batch of {features.batch_size}.")
    outputs = getattr(features.layer_map, "decoder_outputs", None)
    maps = []
    for b in config.feature_blocks:
        key = outputs[b] if outputs is not None and b < len(outputs) else f"up_blocks.{b}"
        if key not in features.hidden_states:
            raise ValueError(f"`features` lacks the output of {key}; record it with this method's plan.")
        maps.append(features.hidden_states[key][0])
    grid = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    return feature_stack(maps, grid)


def _prototype_scores(
    features: Features, config: MaskDiffusionConfig, spans: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each name's max-normalised unnormalised attention (K', h, w) and its prototype's score
    map (K', h, w), on the finest feature grid."""
    feats = _features(features, config)
    grid = tuple(feats.shape[-2:])
    log_maps = {hw: m[0] for hw, m in features.by_resolution("cross").items()}
    counts: dict[tuple[int, int], int] = {}
    for key, n in features.layer_counts.items():
        if key in features.cross_attention:
            counts[features.layer_sizes[key]] = counts.get(features.layer_sizes[key], 0) + n
    attention = unnormalised_class_maps(log_maps, counts, spans, grid)  # (K', h, w)
    return attention, prototype_scores(feats, attention.to(feats.device))


def _to_image(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def _class_scores(
    features: Features, config: MaskDiffusionConfig, query: Query | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each name's attention (K', h, w) and the class scores (K, h, w) on the finest feature grid."""
    if query is None:
        raise ValueError("MaskDiffusion's `segment` needs the `query` its pass was planned for.")
    if not features.cross_attention or features.normalization != "log":
        raise ValueError("`features` holds no log cross-attention; record it with MaskDiffusion's plan.")
    rows = name_rows(query.classes)
    spans = text_columns(features, 0, [n for _, n in rows], config.text_encoders)  # columns of T per name
    # no post-processing setting changes the names' attention and prototype scores: kept with
    # the features, so re-segmenting from cached features with another `background_score` skips them
    spans_key = tuple(tuple(p) for p in spans)
    key = ("maskdiffusion", "prototype_scores", config.feature_blocks, config.text_encoders, spans_key)
    attention, per_name = features.derive(key, lambda: _prototype_scores(features, config, spans))
    bg = background_index(query.classes)
    scores = class_scores(per_name, [c for c, _ in rows], len(query.classes), bg, config.background_score)
    return attention, scores  # synonyms: max


def score_maps(
    features: Features,
    config: MaskDiffusionConfig = MaskDiffusionConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The class scores `segment` labels by: (K, H, W) float32 at the model input size, the
    prototype scores on the feature grid (a class the best of its names, the background class
    the constant `config.background_score`) upsampled bilinearly."""
    return _to_image(_class_scores(features, config, query)[1], features.image_size)


def segment(
    features: Features,
    config: MaskDiffusionConfig = MaskDiffusionConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Label one image with the query's classes by attention-weighted feature prototypes.

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size indexing
        `query.classes`, `names`, `scores` (K,) = each class's mean score over its pixels,
        extras["class_attention"] (K', h, w) in [0, 1] and extras["class_scores"] (K, h, w).
    """
    attention, scores = _class_scores(features, config, query)
    full = _to_image(scores, features.image_size)
    labels = argmax0(full)
    class_score = mean_score_per_label(full, labels)
    return Segmentation(
        labels=labels.cpu(),
        names=list(query.class_names),
        scores=class_score,
        extras={"class_attention": attention.cpu(), "class_scores": scores.cpu()},
    )


def segment_kmeans(
    features: Features,
    config: MaskDiffusionKMeansConfig = MaskDiffusionKMeansConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Cluster the decoder features with k-means (K fixed, or by `k_rule`).

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size in [0, K);
        meta["k"] and, with the silhouette rule, meta["silhouette"] per K tried.

    Raises:
        ValueError: if K < 2 or K exceeds the feature pixels, or the rule has no classes.
    """
    from ..ops.kmeans import choose_k, kmeans

    feats = _features(features, config)
    c, h, w = feats.shape
    x = feats.reshape(c, h * w).T  # (N, C)
    gen = torch.Generator(device=x.device).manual_seed(config.seed)
    meta: dict[str, Any] = {}
    k = config.k
    if k is None and config.k_rule == "query-classes":
        k = len(query.classes) if query is not None else 0
        if k < 2:
            raise ValueError(f"`k_rule` 'query-classes' needs at least 2 query classes, got {k}; give `k` or classes.")
    elif k is None:
        k, silhouettes = choose_k(x, 2, config.k_max, generator=gen)
        meta["silhouette"] = {str(key): round(v, 4) for key, v in silhouettes.items()}
        gen.manual_seed(config.seed)
    if k > h * w:
        raise ValueError(f"`k` {k} exceeds the {h * w} feature pixels of this image.")
    labels, centres = kmeans(x, k, generator=gen)
    closeness = -torch.cdist(x.float(), centres.to(x.device).float()).T.reshape(k, h, w)
    full = argmax0(_to_image(closeness, features.image_size))
    _, dense = torch.unique(full, return_inverse=True)  # ids 0..K'-1 in order of appearance
    meta["k"] = int(k)
    return Segmentation(labels=dense.cpu(), meta=meta, extras={"grid_labels": labels.reshape(h, w).cpu()})


#: Model family -> overrides (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"timestep": 300, "attention_levels": (1, 2)},
    **{family: {"attention_levels": (0,)} for family in ("sd3", "sd35", "flux")},
    # docs/mmdit_presets.md: every joint layer's T5 columns (SD3's CLIP part is the default), blocks 3-5
    "toy-mmdit": {"timestep": 300, "attention_levels": (0,), "feature_blocks": (3, 4, 5), "text_encoders": ("t5",)},
}
KMEANS_PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"timestep": 500, "image_size": 128},
    "toy-mmdit": {"timestep": 500, "feature_blocks": (3, 4)},  # docs/mmdit_presets.md
}

SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    presets=PRESETS,
    needs_classes=True,
    score_maps=score_maps,
)

KMEANS_SPEC = MethodSpec.from_info(
    KMEANS_INFO,
    plan=plan_kmeans,
    segment=segment_kmeans,
    presets=KMEANS_PRESETS,
)
