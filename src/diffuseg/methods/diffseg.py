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
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backbone.features import FeatureRequest, Features
from ..labeling.naming import LABELS, check_naming
from ..ops.attention import aggregate_self_attention
from ..ops.clustering import anchor_distances, kmeans_refine, merge_attention
from ..ops.masks import maps_to_labels
from ..ops.votes import VOTINGS
from ..plan import LATENT_MODES, Pass, Query, check_layers, check_positive, check_timestep
from ..types import Segmentation
from ._resources import CAPTIONER, CLIP, naming_pass_prompt, segment_names
from .spec import MethodSpec

__all__ = ["DiffSegConfig", "REQUIRES", "PRESETS", "plan", "segment", "SPEC"]

logger = logging.getLogger(__name__)

#: All self-attention layers, head-averaged, as per-resolution running means (the reference
#: sums the 5/5/5/1 SD-1.x layers per resolution in the graph, diffusion_model.py l.49-120).
REQUIRES = FeatureRequest(self_attention=True)


@dataclass(frozen=True)
class DiffSegConfig:
    """Hyperparameters of DiffSeg (defaults: google/diffseg `benchmarks.ipynb`, COCO-Stuff-27).

    `timestep`, `image_size`, `add_noise`, `prompt` and `latent_mode` are the pass settings the
    paper fixes (they go into DiffSeg's `Pass`); how the image is fitted to the input (whole, or
    a protocol's crop) is the caller's (`diffuseg.plan.Query`).

    Attributes:
        kl_thresholds: τ, one symmetric-KL merge threshold per iteration (benchmarks cell 10:
            [1.1]*3 for COCO-Stuff; 0.9 for Cityscapes and the demo notebook).
        num_anchors_per_side: anchor grid side (NUM_POINTS = 16 -> 256 anchors).
        refine: k-means refinement of the proposals (off in the benchmarks, on in the demo).
        timestep: UNet timestep (both notebooks: 300).
        image_size: model input side (the longer side; the whole image is seen, see
            `diffuseg.plan.Query.resize_mode`); None = the model's native resolution, which is
            the reference's 512 on SD 1.x (utils.py l.23) and scales to SD 2-768 / SDXL.
        add_noise: noise the latent to `timestep` (the reference feeds the clean latent).
        prompt: conditioning text ("" = unconditional context, as the reference).
        latent_mode: VAE posterior "mean" (the reference's ImageEncoder output) or "sample".
        label: "none" (segment ids, the paper's), "classes" or "caption": name each segment
            from the query's class names, or from its caption's nouns (the reference's semantic
            labels), by the cross-attention of their tokens recorded in the same pass; the
            naming prompt (the names joined, or the caption) replaces `prompt`
            (`diffuseg.labeling.naming`).
        voting: how a segment picks its class: "mean" (the reference's) or "majority".
        label_template: the naming prompt, filled with the class names joined by " and ".
        layers: the self-attention maps read, as indices in forward order
            (`LayerMap.select`: on an MM-DiT the i-th joint attention layer); None = all of
            them (the paper, on SD's UNet).
    """

    kl_thresholds: tuple[float, ...] = (1.1, 1.1, 1.1)
    num_anchors_per_side: int = 16
    refine: bool = False
    timestep: int = 300
    image_size: int | None = None
    add_noise: bool = False
    prompt: str = ""
    latent_mode: str = field(default="mean", metadata={"choices": LATENT_MODES})
    label: str = field(default="none", metadata={"choices": LABELS})
    voting: str = field(default="mean", metadata={"choices": VOTINGS})
    label_template: str = "a photo of a {class}"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_naming(self.label, self.voting, self.label_template)
        object.__setattr__(self, "layers", check_layers(self.layers))
        if isinstance(self.kl_thresholds, (int, float)):
            object.__setattr__(self, "kl_thresholds", (self.kl_thresholds,) * 3)
        thresholds = tuple(self.kl_thresholds)
        if not thresholds:
            raise ValueError("`kl_thresholds` must hold at least one threshold, got ().")
        for t in thresholds:
            check_positive(t, "kl_thresholds")
        object.__setattr__(self, "kl_thresholds", tuple(float(t) for t in thresholds))
        check_positive(self.num_anchors_per_side, "num_anchors_per_side", integer=True)
        check_timestep(self.timestep)
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"`latent_mode` must be one of {LATENT_MODES}, got {self.latent_mode!r}.")


#: Model family -> overrides (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"kl_thresholds": (0.05, 0.05, 0.05), "image_size": 128},
    # docs/mmdit_presets.md: the paper's tau 1.1 at the native 128 px, layers 3-4 of 6 at t 100
    "toy-mmdit": {"timestep": 100, "layers": (3, 4)},
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


SPEC = MethodSpec(
    name="diffseg",
    resources=(CAPTIONER, CLIP),
    config_cls=DiffSegConfig,
    plan=plan,
    segment=segment,
    kind="unsupervised",
    description="DiffSeg (CVPR 2024): merges self-attention maps by KL distance; unsupervised.",
    presets=PRESETS,
    working_bytes=working_bytes,
)
