"""`diffuseg eval --engine ray`: the units of `evaluate` through the Ray pipeline.

Samples are read and framed on CPU tasks (`diffuseg.eval.units.load_unit`); each actor builds
its own segmenter (and backbone, from a loader when given one) and scores units
(`score_unit`); the records come back to the driver, which adds them to the run's resumable
`ResultStore`. Units are those of the local engine, and each image's noise comes from its own
generator, so the records, and the report, equal the local engine's (timings aside).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_eval_units", "EvalWorker"]


class EvalWorker:
    """One actor's segmenter; scores decoded units.

    Args:
        segmenter: (factory, backbone or a zero-argument loader, method name, keyword args).
        ctx: the `UnitContext`.
        threads: torch threads (None: torch's default).
    """

    def __init__(self, segmenter: tuple[Callable[..., Any], Any, str, dict[str, Any]], ctx: Any, threads: int | None):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        factory, backbone, method, kwargs = segmenter
        if callable(backbone) and not hasattr(backbone, "extract"):
            backbone = backbone()
        self.segmenter = factory(backbone, method, **kwargs)
        self.ctx = ctx

    def __call__(self, decoded: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        from .units import score_unit

        return score_unit(self.segmenter, self.ctx, decoded)


def run_eval_units(
    units: Sequence[list[int]],
    dataset: Any,
    segmenter: tuple[Callable[..., Any], Any, str, dict[str, Any]],
    ctx: Any,
    options: Any,
    on_result: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Score `units` (lists of dataset indices) of `dataset` on Ray; `on_result` gets each unit's
    records on the driver. `dataset` and the segmenter's parts must pickle.

    Raises:
        ConnectionError: an unreachable address; `WorkerDiedError`: a broken pipeline.
    """
    from ..engine.ray_engine import RayOptions, run_units, session
    from .units import load_unit, skip_unit

    options = options or RayOptions()
    ctx = dataclasses.replace(ctx, generator=None)  # every image has its own (ctx.seed)
    with session(options) as cpus:
        run_units(
            units,
            decode=functools.partial(load_unit, dataset, ctx.proto),
            worker=(EvalWorker, (segmenter, ctx, options.actor_threads(cpus))),
            write=None,
            on_result=on_result,
            options=options,
            give_up=skip_unit,
        )
