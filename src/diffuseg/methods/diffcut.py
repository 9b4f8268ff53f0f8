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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..backbone.features import FeatureRequest, Features
from ..labeling.naming import LABELS, check_naming
from ..ops.kway_ncut import kway_normalized_cut
from ..ops.ncut import assign_concepts, recursive_normalized_cut
from ..ops.pamr import pamr_affinity, refine_labels
from ..ops.votes import VOTINGS
from ..plan import Pass, Query, check_positive, check_timestep
from ..types import Segmentation
from ._resources import CAPTIONER, CLIP, naming_pass_prompt, segment_names
from .spec import MethodSpec

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone, LayerMap

__all__ = ["DiffCutConfig", "PRESETS", "SOLVERS", "plan", "requires", "segment", "token_features", "SPEC"]

logger = logging.getLogger(__name__)

#: The normalized-cut solvers of `DiffCutConfig.solver`: the paper's recursive two-way cut
#: (`diffuseg.ops.ncut`) and the discrete K-way cut after Falcon (`diffuseg.ops.kway_ncut`).
SOLVERS = ("recursive", "kway")

_PATH = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$")


@dataclass(frozen=True)
class DiffCutConfig:
    """Hyperparameters of DiffCut (defaults: PaulCouairon/DiffCut@aa16df4, unsupervised eval).

    `timestep`, `image_size`, `add_noise`, `shared_noise` and `prompt` are the pass settings the
    paper fixes (they go into DiffCut's `Pass`); how the image is fitted to the input (whole, or
    a protocol's crop) is the caller's (`diffuseg.plan.Query`).

    Attributes:
        tau: recursion stops when the best ncut is >= tau (paper tau; `eval_diffcut.py`
            l.182, README `--tau 0.5`); the recursive solver only.
        solver: "recursive" (the paper's recursive two-way cut, stopped by `tau`) or "kway"
            (a discrete K-way cut after Falcon, ICLR 2026, `diffuseg.ops.kway_ncut`; K from
            `num_segments` or the eigengap rule; `tau`, `num_thresholds` and `drop_zero_rows`
            do not apply).
        num_segments: K of the K-way solver; None = the eigengap rule (the K in
            [min_segments, max_segments] at the largest gap between consecutive eigenvalues
            of D^-1/2 W D^-1/2; it never sees a ground truth). Falcon fixes K per dataset.
        max_segments: the largest K of the eigengap rule (ours; see `SPEC.presets`).
        min_segments: the smallest K of the eigengap rule (ours: 2, an image is cut at least once).
        alpha: affinity exponent (paper alpha; `eval_diffcut.py` l.183).
        timestep: UNet timestep the clean latent is noised to (`eval_diffcut.py` l.179
            `--step 50`; `ldm.py` l.147).
        image_size: model input side, the longer side (`eval_diffcut.py` l.180
            `--img_size 1024`, SSD-1B's native size); None = the model's native size.
        add_noise: noise the VAE posterior mean to `timestep` (`ldm.py` l.147).
        shared_noise: one noise draw for the whole batch (`ldm.py` l.145 expands one draw);
            False draws per image from the caller's generator.
        prompt: text condition ("" in `ldm.py` l.136; no classifier-free guidance).
        assignment_size: longer side of the label map from concept assignment; None = the
            caller's scoring size (`Query.label_size`: 128 under the "diffcut" eval protocol,
            as `eval_diffcut.py` l.120) or else the model input's (H, W) (demo notebook).
        refine: PAMR + median filter after assignment (`eval_diffcut.py --refinement`, used
            for the README numbers).
        pamr_iterations: PAMR steps (`eval_diffcut.py` l.92: 10; demo notebook: 30).
        pamr_dilations: PAMR dilations (`eval_diffcut.py` l.92: 1, 2, 4, 8).
        median_size: median filter window (`eval_diffcut.py` l.94: 3); 1 disables it.
        num_thresholds: Fiedler thresholds per cut (`recursive_normalized_cut.py` l.35: 100);
            the recursive solver only.
        drop_zero_rows: reproduce the reference's exact-zero row dropping in the cut; the
            recursive solver only.
        label: "none" (segment ids, the paper's unsupervised setting), "classes" or "caption":
            name each segment from the query's class names or its caption's nouns by the
            cross-attention of their tokens, recorded in the same pass with the naming prompt
            (training-free; the paper's open-vocabulary labelling uses CLIP instead,
            `diffuseg.labeling.naming`).
        voting: how a segment picks its class: "mean" or "majority".
        label_template: the naming prompt, filled with the class names joined by " and ".
    """

    tau: float = 0.5
    solver: str = field(default="recursive", metadata={"choices": SOLVERS})
    num_segments: int | None = None
    max_segments: int = 8
    min_segments: int = 2
    alpha: float = 10.0
    timestep: int = 50
    image_size: int | None = 1024
    add_noise: bool = True
    shared_noise: bool = False
    prompt: str = ""
    assignment_size: int | None = None
    refine: bool = True
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8)
    median_size: int = 3
    num_thresholds: int = 100
    drop_zero_rows: bool = False
    label: str = field(default="none", metadata={"choices": LABELS})
    voting: str = field(default="mean", metadata={"choices": VOTINGS})
    label_template: str = "a photo of a {class}"

    def __post_init__(self) -> None:
        check_naming(self.label, self.voting, self.label_template)
        check_positive(self.tau, "tau")
        if self.solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {SOLVERS}, got {self.solver!r}.")
        check_positive(self.num_segments, "num_segments", integer=True, allow_none=True)
        check_positive(self.max_segments, "max_segments", integer=True)
        check_positive(self.min_segments, "min_segments", integer=True)
        if self.min_segments > self.max_segments:
            raise ValueError(
                f"`min_segments` ({self.min_segments}) must be at most `max_segments` ({self.max_segments})."
            )
        check_positive(self.alpha, "alpha")
        check_timestep(self.timestep)
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)
        check_positive(self.assignment_size, "assignment_size", integer=True, allow_none=True)
        check_positive(self.pamr_iterations, "pamr_iterations", integer=True, allow_zero=True)
        dil = tuple(self.pamr_dilations)
        if not dil or any(int(d) != d or d < 1 for d in dil):
            raise ValueError(f"`pamr_dilations` must be ints >= 1, got {self.pamr_dilations!r}.")
        object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in dil))
        if self.median_size < 1 or self.median_size % 2 == 0:
            raise ValueError(f"`median_size` must be an odd int >= 1, got {self.median_size}.")
        check_positive(self.num_thresholds, "num_thresholds", integer=True)


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


SPEC = MethodSpec(
    name="diffcut",
    resources=(CAPTIONER, CLIP),
    config_cls=DiffCutConfig,
    plan=plan,
    segment=segment,
    kind="unsupervised",
    description="DiffCut (NeurIPS 2024): recursive normalized cut of one self-attention block's output.",
    presets=PRESETS,
)
