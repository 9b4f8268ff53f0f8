"""DiffSeg: unsupervised zero-shot segmentation by iteratively merging self-attention maps.

Tian et al., "Diffuse, Attend, and Segment: Unsupervised Zero-Shot Segmentation using Stable
Diffusion", CVPR 2024. Ported from the authors' code, https://github.com/google/diffseg at
commit 77ea596 (TensorFlow/KerasCV), to diffusers.

One UNet pass at t=300 on the clean VAE latent with the empty prompt records all self-attention
maps; they are averaged per resolution (and over heads), aggregated to the highest resolution,
merged by symmetric KL distance from an anchor grid, optionally refined with k-means, and
upsampled to the image with a per-pixel argmax.

Semantic labels (`label`, `diffuseg.labeling.naming`): with class names or a caption, the same
pass runs with them as its prompt and records their cross-attention; each segment takes the
class that wins its vote (mean, the reference's, or a true majority: the reference's "majority"
is a median) and segments with one name merge. With ``label="clip"`` a CLIP resource names them
from dense image features instead.

Presets (`SPEC.presets`, by `DiffusionBackbone.family`; any setting overrides them):

* ``toy`` (the proving-ground model shipped with diffuseg, 64 px native, 8x8 latent): its
  attention maps are much flatter than SD's, so tau = 0.05 per iteration, and twice the native
  size (128 px, 16x16 maps); both tuned on the proving ground's *test* split
  (`benchmarks/bench_proving_ground.py --tune-kl`, docs/proving_ground_results.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..backbone.features import FeatureRequest, Features
from ..ops.attention import aggregate_self_attention
from ..ops.clustering import anchor_distances, kmeans_refine, merge_attention
from ..ops.masks import maps_to_labels
from ..plan import Pass, Query
from ..types import Segmentation
from ._resources import naming_pass_prompt, segment_names
from .diffseg_config import INFO, DiffSegConfig
from .spec import MethodSpec

__all__ = ["DiffSegConfig", "REQUIRES", "PRESETS", "plan", "segment", "SPEC"]

logger = logging.getLogger(__name__)

#: All self-attention layers, head-averaged, as per-resolution running means (the reference
#: sums the 5/5/5/1 SD-1.x layers per resolution in the graph, diffusion_model.py l.49-120).
REQUIRES = FeatureRequest(self_attention=True)


#: Model family -> overrides (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"kl_thresholds": (0.05, 0.05, 0.05), "image_size": 128},
    # docs/mmdit_presets.md: the paper's tau 1.1 at the native 128 px, the last of 6 layers at t 500
    "toy-mmdit": {"timestep": 500, "layers": (5,)},
}


def plan(config: DiffSegConfig, query: Query, backbone: Any = None, resources: Any = None) -> Pass:
    """One UNet pass at `config.timestep` recording every self-attention layer (and, to name
    the segments, the cross-attention of a prompt with the query's class names)."""
    request, prompt = REQUIRES, config.prompt
    if config.layers is not None:
        if backbone is None:
            raise ValueError("DiffSeg finds `layers` on the backbone's layer map; got `backbone=None`.")
        request = FeatureRequest(self_attention=backbone.layer_map.select("image", config.layers))
    naming = naming_pass_prompt(config, query, backbone, resources)
    if naming is not None:
        prompt, request = naming, request | FeatureRequest(cross_attention=True)
    return Pass.for_query(
        query,
        config.image_size,
        request=request,
        timestep=config.timestep,
        prompts=(prompt,),
        add_noise=config.add_noise,
        latent_mode=config.latent_mode,
    )


def segment(
    features: Features,
    config: DiffSegConfig = DiffSegConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Segment one image from its recorded self-attention maps.

    Args:
        features: `Features` of one image with `REQUIRES` recorded.
        config: hyperparameters.
        query: its class names (``label="classes"``) or caption (``"caption"``) name the segments.
        resources: unused.

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size, values in [0, K): segment
        ids, or with ``label="classes"`` indices into `query.classes` (`names`; the segment ids
        in extras["segments"]).

    Raises:
        ValueError: if `features` holds no self-attention maps or more than one image.
    """
    if not features.self_attention:
        raise ValueError("`features` holds no self-attention maps; extract with diffseg.REQUIRES.")
    if features.batch_size != 1:
        raise ValueError(f"`segment` takes the features of one image, got a batch of {features.batch_size}.")
    # the aggregated maps and the anchors' KL distances depend on no threshold: kept with the
    # features, so re-segmenting from cached features with other thresholds skips them
    aggregated = features.derive(("diffseg", "aggregated"), lambda: _aggregated(features))  # (R*R, R, R)
    side = min(aggregated.shape[1:])
    anchors = min(config.num_anchors_per_side, side)
    if anchors < config.num_anchors_per_side:
        logger.warning(
            "%d anchors per side do not fit a %d-token grid; using %d.", config.num_anchors_per_side, side, anchors
        )
    anchor_kl = features.derive(("diffseg", "anchor_kl", anchors), lambda: anchor_distances(aggregated, anchors))
    proposals = merge_attention(aggregated, anchors=anchors, thresholds=config.kl_thresholds, anchor_kl=anchor_kl)
    if config.refine:
        proposals = kmeans_refine(proposals, aggregated)
    labels = maps_to_labels(proposals, features.image_size).cpu()
    named = segment_names(config, labels, features, query, resources)
    if named is not None:
        return Segmentation(labels=named[0], names=named[1], extras={"proposals": proposals.cpu(), "segments": labels})
    return Segmentation(labels=labels, extras={"proposals": proposals.cpu()})


def _aggregated(features: Features) -> torch.Tensor:
    maps = {size: m[0] for size, m in features.by_resolution("self").items()}  # (h, w) -> (N, N)
    return aggregate_self_attention(maps)


def working_bytes(tokens: int) -> int:
    """Peak memory of `segment` for a finest attention grid of `tokens` = N tokens: the
    aggregated (N, R, R') maps and their upsampling intermediates, about 3 float32 N x N maps
    (measured on the toy model: 5.5 GB at 512 px, N = 128 x 128, of which 2.2 GB recording)."""
    return 3 * 4 * tokens * tokens


SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    presets=PRESETS,
    working_bytes=working_bytes,
)
