"""The options of `diffuseg.eval.evaluate` that do not change its results: where the images are
segmented (`EngineOptions`) and where the results go (`OutputOptions`).

Example:
    >>> from diffuseg.eval import EngineOptions, OutputOptions, evaluate
    >>> evaluate(ds, "slic", engine=EngineOptions(batch_size=4), output=OutputOptions("results", resume=True))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

__all__ = ["EngineOptions", "OutputOptions"]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Where and in which groups the images are segmented. With equal `batch_size` every engine
    gives the same records, and the same report (timings aside).

    Args:
        engine: one of `diffuseg.engine.ENGINES`: ``local`` (this process) or ``ray`` (an actor
            pool on a Ray cluster, `ray_options`: the batches of ``batch_size`` images are those
            of the local engine). The records go to the same resumable store.
        batch_size: images per backbone pass.
        ray_options: a `diffuseg.engine.ray_engine.RayOptions` (default: one actor on a local
            Ray instance).
        backbone_loader: engine ``ray``: a picklable zero-argument callable each actor loads its
            backbone with (default: the actors get a copy of `evaluate`'s `backbone`, through Ray's
            object store).
        segmenter_factory: ``(backbone, method, batch_size=..., **overrides) -> segmenter``;
            default `diffuseg.segmenter.Segmenter`.

    Raises:
        ValueError: naming `engine` or `batch_size`.
    """

    engine: str = "local"
    batch_size: int = 1
    ray_options: Any = None
    backbone_loader: Callable[[], Any] | None = None
    segmenter_factory: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        from ..engine import ENGINES

        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {self.batch_size!r}.")
        if self.engine not in ENGINES:
            raise ValueError(f"`engine` must be one of {ENGINES}, got {self.engine!r}.")


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Where a run's results go: ``OUT_DIR/NAME.jsonl`` (per-image records, written as they are
    computed), ``NAME.json`` and ``NAME.md`` (the report).

    Args:
        out_dir: folder for the results.
        name: file stem; None = ``<dataset>_<method>_<protocol>`` (`diffuseg.eval.runner.run_name`).
        resume: continue an existing results file; finished images are not recomputed.
        overwrite: discard an existing results file.
        save_predictions: folder for per-image label PNG / overlay / JSON, or None.
        progress: show a tqdm progress bar with ETA and the running mIoU.
        on_record: called with (index, record) after each image is stored (tests use it to
            interrupt a run).

    Raises:
        ValueError: naming `out_dir` or `save_predictions` if it is empty, or `name` if it is
            not a plain file name (empty, ``.``, ``..``, or with a folder separator).
    """

    out_dir: str | os.PathLike = "results"
    name: str | None = None
    resume: bool = False
    overwrite: bool = False
    save_predictions: str | os.PathLike | None = None
    progress: bool = False
    on_record: Callable[[int, dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        for argument in ("out_dir", "save_predictions"):
            value = getattr(self, argument)
            if value is not None and not str(os.fspath(value)).strip():
                raise ValueError(f"`{argument}` is empty ({str(value)!r}); name a folder (`.` for the current one).")
        name = self.name
        if name is not None and (
            not isinstance(name, str) or name.strip() in ("", ".", "..") or any(c in name for c in "/\\\0")
        ):
            raise ValueError(
                f"`name` must be a file name without folders (the results' file stem), got {name!r}; "
                "put the folder in `out_dir`."
            )
