"""The settings of single: its config and what the command line shows of it (torch-free).

`diffuseg.methods.single` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .info import MethodInfo


@dataclass(frozen=True)
class SingleSegmentConfig:
    """The one-segment baseline has no hyperparameters (it sees the image at its own size)."""


INFO = MethodInfo(
    name="single-segment",
    kind="baseline",
    description="Baseline: the whole image is one segment; no diffusion model.",
    config_cls=SingleSegmentConfig,
)
