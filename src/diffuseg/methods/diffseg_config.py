"""The settings of diffseg: its config and what the command line shows of it (torch-free).

`diffuseg.methods.diffseg` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labeling.settings import LABELS, check_naming
from ..settings import (
    LATENT_MODES,
    VOTINGS,
    check_layers,
    check_positive,
    check_timestep,
)
from ._resources import CAPTIONER, CLIP
from .info import MethodInfo


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


INFO = MethodInfo(
    name="diffseg",
    kind="unsupervised",
    description="DiffSeg (CVPR 2024): merges self-attention maps by KL distance; unsupervised.",
    resources=(CAPTIONER, CLIP),
    config_cls=DiffSegConfig,
)
