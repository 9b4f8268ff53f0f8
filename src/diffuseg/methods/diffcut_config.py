"""The settings of diffcut: its config and what the command line shows of it (torch-free).

`diffuseg.methods.diffcut` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labeling.settings import LABELS, check_naming
from ..settings import (
    VOTINGS,
    check_positive,
    check_timestep,
)
from ._resources import CAPTIONER, CLIP
from .info import MethodInfo

#: The normalized-cut solvers of `DiffCutConfig.solver`: the paper's recursive two-way cut
#: (`diffuseg.ops.ncut`) and the discrete K-way cut after Falcon (`diffuseg.ops.kway_ncut`).
SOLVERS = ("recursive", "kway")


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


INFO = MethodInfo(
    name="diffcut",
    kind="unsupervised",
    description="DiffCut (NeurIPS 2024): recursive normalized cut of one self-attention block's output.",
    resources=(CAPTIONER, CLIP),
    config_cls=DiffCutConfig,
)
