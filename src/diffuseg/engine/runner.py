"""`run_batch`: segment items with one job on an engine, skipping what is done, logging failures.

A run of several methods is a list of jobs (one per method and output folder, everything else
shared: `work.check_shared`) on the local engine: one worker shares the model passes where the
methods' passes agree (`diffuseg.multi`), and each job's outputs go to its own folder. Counts
are then of (image, method) pairs.

The run is resumable at any point: an item is done when all its outputs exist (written all or
none, the JSON last) and its JSON records the run's settings (`resume.check_done`: outputs of
other settings stop the run before any work, unless it overwrites them). Units are cut from the
whole INPUT (`make_units`), and a rerun of the same command skips the units whose items are all
done and redoes the others whole (rewriting a done item of an interrupted unit with the same
bytes), so every model call sees the images it would have seen in an uninterrupted run; with
each image's noise from its own seeded generator, the outputs are byte-identical to an
uninterrupted run's, for any ``batch_size``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..outputs import DEFAULT_SAVE
from . import ENGINES
from .inputs import Item
from .progress import FailureLog, Progress
from .resume import check_done
from .work import (
    Job,
    Outcome,
    OutputFullError,
    Worker,
    check_shared,
    decode_unit,
    give_up,
    is_done,
    make_units,
    write_outcome,
)

__all__ = ["run_batch", "BatchSummary", "write_outcomes"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BatchSummary:
    """What a run did.

    Attributes:
        total: items in INPUT (times the jobs, for a run of several methods).
        done_before: items whose outputs already existed (skipped).
        segmented: items segmented and written by this run.
        failures: the records of the items that failed (also in ``failures.jsonl``).
        seconds: wall time of the work (model loading included).
        engine: the engine used.
    """

    total: int
    done_before: int
    segmented: int = 0
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    engine: str = "local"

    @property
    def images_per_second(self) -> float:
        n = self.segmented + len(self.failures)
        return n / self.seconds if self.seconds > 0 else 0.0


def write_outcomes(
    out_dir: str, outcomes: Sequence[Outcome], save: Sequence[str] = DEFAULT_SAVE
) -> list[dict[str, Any]]:
    """Write a unit's outcomes (`write_outcome`, `save`'s kinds); a full folder ends the unit with
    a record of status ``full`` (the rest of the unit stays undone)."""
    records = []
    for outcome in outcomes:
        try:
            records.append(write_outcome(out_dir, outcome, save))
        except OutputFullError as e:
            records.append({"index": outcome.item.index, "name": outcome.item.name, "status": "full", "error": str(e)})
            break
    return records


def _run_local(
    jobs: list[Job],
    units: list[list[Item]],
    on_result: Callable[[list[dict[str, Any]]], None],
    wording: Callable[[BaseException], str],
) -> None:
    worker = Worker(jobs, wording)
    first = jobs[0]
    for unit in units:
        per_job = worker.segment_all(decode_unit(unit, first.max_pixels, wording))
        records = []
        for job, outcomes in zip(jobs, per_job, strict=True):
            written = write_outcomes(job.out_dir, outcomes, job.save)
            if len(jobs) > 1:
                written = [{**rec, "method": job.method} for rec in written]
            records += written
        on_result(records)


def _run_ray(
    job: Job,
    units: list[list[Item]],
    on_result: Callable[[list[dict[str, Any]]], None],
    options: Any,
    cpus: float,
    wording: Callable[[BaseException], str],
) -> None:
    from .ray_engine import run_units

    if job.threads is None:
        job = dataclasses.replace(job, threads=options.actor_threads(cpus))
    run_units(
        units,
        decode=functools.partial(decode_unit, max_pixels=job.max_pixels, wording=wording),
        worker=(Worker, (job, wording)),
        write=functools.partial(write_outcomes, job.out_dir, save=job.save),
        on_result=on_result,
        options=options,
        give_up=give_up,
    )


def run_batch(
    job: Job | Sequence[Job],
    items: Sequence[Item],
    *,
    engine: str = "local",
    ray_options: Any = None,
    progress: bool = False,
    overwrite: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    wording: Callable[[BaseException], str] = str,
    failure_log: bool = True,
    desc: str = "batch",
) -> BatchSummary:
    """Segment `items` with `job` on `engine` into ``job.out_dir``.

    Args:
        job: the `Job`, or the jobs of one run of several methods (local engine; see the
            module docstring).
        items: the resolved INPUT (`inputs.resolve_inputs`).
        engine: one of `ENGINES`.
        ray_options: a `ray_engine.RayOptions` (engine ``ray``; default one local actor).
        progress: show images/s and the ETA on stderr.
        overwrite: redo items whose outputs exist (default: skip units whose items are all done).
        on_record: called on each image's record as it is logged (monitoring, benchmarks).
        wording: the message of a failed image's error (default ``str``; the CLI names its flags).
        failure_log: list the failed images in ``OUT/failures.jsonl`` (``diffuseg segment``
            prints them instead).
        desc: the progress bar's label.

    Returns:
        The `BatchSummary`; failed images are listed in ``OUT/failures.jsonl``.

    Raises:
        ValueError: naming `engine`, or a setting a worker refuses; `resume.OutputMismatchError`
            (before any work) if done outputs record other settings and `overwrite` is False.
        OutputFullError: the output folder filled up (no partial file looks complete).
        ConnectionError: an unreachable Ray address.
    """
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {ENGINES}, got {engine!r}.")
    jobs = [job] if isinstance(job, Job) else list(job)
    check_shared(jobs)
    if len(jobs) > 1 and engine != "local":
        raise ValueError(f"several methods share their passes on the 'local' `engine` only, got {engine!r}.")
    for j in jobs:
        os.makedirs(j.out_dir, exist_ok=True)
    units = make_units(items, jobs[0].batch_size)
    if not overwrite:
        done = {it.name for it in items}
        for j in jobs:
            done_here = {it.name for it in items if is_done(j.out_dir, it.name, j.save)}
            check_done(j, [it for it in items if it.name in done_here])  # done only with this run's settings
            done &= done_here
        units = [u for u in units if not all(it.name in done for it in u)]
    todo = sum(len(u) for u in units) * len(jobs)
    total = len(items) * len(jobs)
    summary = BatchSummary(total=total, done_before=total - todo, engine=engine)
    if not units:
        return summary
    with contextlib.ExitStack() as stack:
        cpus = None
        if engine == "ray":  # connect (or fail) before the progress bar shows
            from .ray_engine import RayOptions, session

            ray_options = ray_options or RayOptions()
            cpus = stack.enter_context(session(ray_options))
        reporting = _Reporting(progress, on_record, wording, failure_log, desc)
        _run(jobs, units, summary, engine, ray_options, cpus, reporting)
    logger.info("%d image(s) in %.1f s (%.2f img/s)", summary.segmented, summary.seconds, summary.images_per_second)
    return summary


@dataclasses.dataclass(frozen=True)
class _Reporting:
    """How a run reports: its progress bar, record callback, error wording and failure log."""

    progress: bool
    on_record: Callable[[dict[str, Any]], None] | None
    wording: Callable[[BaseException], str]
    failure_log: bool
    desc: str


def _run(
    jobs: list[Job],
    units: list[list[Item]],
    summary: BatchSummary,
    engine: str,
    ray_options: Any,
    cpus: float | None,
    reporting: _Reporting,
) -> None:
    """Run the units on the engine (Ray connected), logging records into `summary`."""
    log_dir = os.path.commonpath([os.path.abspath(j.out_dir) for j in jobs]) if len(jobs) > 1 else jobs[0].out_dir
    failures = FailureLog(log_dir) if reporting.failure_log else None
    bar = Progress(
        sum(len(u) for u in units) * len(jobs),
        done_before=summary.done_before,
        enabled=reporting.progress,
        desc=reporting.desc,
    )
    on_record = reporting.on_record

    def on_result(records: list[dict[str, Any]]) -> None:
        for rec in records:
            if rec["status"] == "full":
                raise OutputFullError(rec["error"])
            if rec["status"] == "ok":
                summary.segmented += 1
            else:
                if failures is not None:
                    failures.add(rec)
                summary.failures.append(rec)
            bar.update(1)
            if on_record is not None:
                on_record(rec)

    t0 = time.perf_counter()
    try:
        if engine == "local":
            _run_local(jobs, units, on_result, reporting.wording)
        else:
            _run_ray(jobs[0], units, on_result, ray_options, cpus, reporting.wording)
    finally:
        summary.seconds = time.perf_counter() - t0
        bar.close()
        if failures is not None:
            failures.close()
