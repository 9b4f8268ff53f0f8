"""Several methods scored on one dataset from shared model passes: `evaluate_methods`.

Each method gets what `evaluate` gives it alone: its own resumable results file
``OUT_DIR/<dataset>_<method>_<protocol>.jsonl`` and its own report (``.json`` / ``.md``), with
the same fingerprint, so a run of several methods resumes as, and can be resumed by, the runs
of each method alone. What changes is the work: each unit of images is read and framed once,
and the methods' model passes are shared where they agree (`diffuseg.multi.MultiSegmenter`).
With a `seed` every image draws its noise from its own generator, so each method's records are
those of its run alone, bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from .metrics import ImageCounts, MetricAccumulator
from .options import EngineOptions, OutputOptions
from .protocols import Protocol
from .report import write_report
from .run_settings import (
    RunSettings,
    as_options,
    check_folders,
    full_fingerprint,
    resolve_run,
    run_fingerprint,
    run_report,
)
from .store import ResultStore, check_results_file
from .units import UnitContext, load_unit, unit_queries, unit_records

__all__ = ["evaluate_methods", "check_outputs"]

logger = logging.getLogger(__name__)


def _check_methods(methods: Sequence[str], output: OutputOptions, engine: EngineOptions, sweep: Any) -> list[str]:
    """The method names, checked for what a run of several cannot do."""
    methods = list(methods) if not isinstance(methods, str) else [methods]
    if not methods:
        raise ValueError("`methods` is empty; name at least one method.")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ValueError(f"`methods` names {repeated} more than once; give each method once.")
    if len(methods) > 1:
        if output.name is not None:
            raise ValueError(
                f"`name` {output.name!r} would be the file stem of all {len(methods)} methods' results; "
                "leave it out (each method gets <dataset>_<method>_<protocol>) or run the methods one by one."
            )
        if engine.engine != "local":
            raise ValueError(f"`engine` {engine.engine!r}: a run of several methods runs on the local engine.")
        if sweep is not None:
            raise ValueError("`tune_background` sweeps one method's background score; run that method on its own.")
    return methods


def _runs(dataset: SegmentationDataset, methods: list[str], engine: EngineOptions, output: OutputOptions,
          settings: dict[str, Any]) -> list[RunSettings]:  # fmt: skip
    """Each method's resolved run (`resolve_run`), predictions folders per method."""
    return [resolve_run(dataset, m, engine, output, **settings) for m in methods]


def _pred_dir(output: OutputOptions, method: str, several: bool) -> str | None:
    if output.save_predictions is None:
        return None
    return str(Path(output.save_predictions) / method) if several else str(output.save_predictions)


def check_outputs(
    dataset: SegmentationDataset,
    methods: Sequence[str],
    *,
    protocol: str | Protocol = "full",
    matching: str | None = None,
    background_class: int | None = None,
    classes: str = "all",
    class_names: Sequence[Sequence[str]] | None = None,
    tune_background: Sequence[float] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    engine: EngineOptions | None = None,
    output: OutputOptions | None = None,
) -> list[Path]:
    """`diffuseg.eval.runner.check_output` for each method of a run of several (before any model
    loads): the results files, one per method.

    Raises:
        ValueError: naming `methods` (empty, a repeat), `name`, `engine` or `tune_background`
            with several methods, or what `check_output` raises.
    """
    engine = as_options(engine, EngineOptions, "engine")
    output = as_options(output, OutputOptions, "output")
    methods = _check_methods(methods, output, engine, tune_background)
    settings = dict(protocol=protocol, matching=matching, background_class=background_class, classes=classes,
                    tune_background=tune_background, limit=limit, seed=seed, query_classes=class_names)  # fmt: skip
    paths = []
    for run in _runs(dataset, methods, engine, output, settings):
        check_folders(dataset, run, output)
        path = Path(output.out_dir) / f"{run.name}.jsonl"
        check_results_file(path, run_fingerprint(dataset, run), resume=output.resume, overwrite=output.overwrite)
        paths.append(path)
    return paths


def evaluate_methods(
    dataset: SegmentationDataset,
    methods: Sequence[str],
    *,
    backbone: Any = None,
    model_id: str | None = None,
    config_overrides: Mapping[str, dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    protocol: str | Protocol = "full",
    matching: str | None = None,
    background_class: int | None = None,
    classes: str = "all",
    class_names: Sequence[Sequence[str]] | None = None,
    class_filter: Any = None,
    limit: int | None = None,
    generator: Any = None,
    seed: int | None = None,
    engine: EngineOptions | None = None,
    output: OutputOptions | None = None,
) -> dict[str, dict[str, Any]]:
    """Score several methods on `dataset`, one model pass per image where their passes agree.

    Arguments as `diffuseg.eval.evaluate`, except:

    Args:
        methods: registry names, each once (one name runs that method alone).
        config_overrides: method name -> its config fields to change.
        matching: None = each method's default (``none`` for open-vocabulary methods, else
            ``hungarian-per-image``); a name applies to every method.
        output: ``save_predictions`` gets one sub-folder per method; ``name`` only with one method.

    Returns:
        Method name -> its report (also written as ``NAME.json`` / ``NAME.md``, ``NAME`` =
        ``<dataset>_<method>_<protocol>``).

    Raises:
        ValueError: see `check_outputs`, and what `evaluate` raises. The engine is the local one
            for several methods; `tune_background` is for one method at a time.
    """
    from ..multi import MultiSegmenter

    engine = as_options(engine, EngineOptions, "engine")
    output = as_options(output, OutputOptions, "output")
    methods = _check_methods(methods, output, engine, None)
    overrides = dict(config_overrides or {})
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise ValueError(f"`config_overrides` names {unknown}, which are not among `methods` {methods}.")
    settings = dict(protocol=protocol, matching=matching, background_class=background_class, classes=classes,
                    tune_background=None, limit=limit, seed=seed, query_classes=class_names)  # fmt: skip
    runs = _runs(dataset, methods, engine, output, settings)
    extra: dict[str, Any] = {"resources": resources} if resources else {}
    if class_filter not in (None, "none"):
        extra["class_filter"] = class_filter
    factory = engine.segmenter_factory
    if factory is None:
        from ..segmenter import Segmenter as factory  # noqa: N813
    several = len(methods) > 1
    jobs = []
    for run in runs:
        check_folders(dataset, run, output)
        segmenter = factory(
            backbone, run.spec, batch_size=engine.batch_size, **extra, **overrides.get(run.spec.name, {})
        )
        fingerprint = full_fingerprint(dataset, run, segmenter, model_id, extra)
        store = ResultStore(
            Path(output.out_dir) / f"{run.name}.jsonl", fingerprint, resume=output.resume, overwrite=output.overwrite
        )
        ctx = UnitContext(
            proto=run.proto,
            class_names=run.class_names,
            matching=run.matching,
            classes=run.classes,
            sweep=None,
            pred_dir=_pred_dir(output, run.spec.name, several),
            overwrite_predictions=output.overwrite or output.resume,
            generator=generator,
            seed=run.seed,
            query_classes=run.query_classes,
        )
        jobs.append(_Job(run, segmenter, store, ctx, fingerprint))
    _score_all(dataset, jobs, MultiSegmenter([j.segmenter for j in jobs]), engine, output)
    reports = {}
    for job in jobs:
        report = run_report(job.store, dataset, job.run, job.fingerprint)
        out_dir = Path(output.out_dir)
        write_report(report, out_dir / f"{job.run.name}.json", out_dir / f"{job.run.name}.md")
        reports[job.run.spec.name] = report
    return reports


class _Job:
    """One method of the run: its settings, segmenter, results file (and its fingerprint), unit
    context, running scores."""

    def __init__(
        self, run: RunSettings, segmenter: Any, store: ResultStore, ctx: UnitContext, fingerprint: dict
    ) -> None:
        self.run, self.segmenter, self.store, self.ctx, self.fingerprint = run, segmenter, store, ctx, fingerprint
        self.acc = MetricAccumulator(len(run.class_names), run.matching, run.background_class)
        for rec in store.ordered(run.num):
            if rec["status"] == "ok":
                self.add(rec)

    def add(self, rec: dict[str, Any]) -> None:
        if rec["status"] == "ok":
            self.acc.add(ImageCounts.from_record(rec["counts"], len(self.run.class_names)))

    def todo(self, unit: Sequence[int]) -> bool:
        return any(not self.store.done(i) for i in unit)


def _score_all(
    dataset: SegmentationDataset, jobs: list[_Job], multi: Any, engine: EngineOptions, output: OutputOptions
) -> None:
    """Score the images some method's results file does not hold yet, a unit at a time: the
    unit is read once, segmented by the methods that still need it (shared passes), and each
    method's records are stored (a method already done for the unit is not run on it)."""
    from tqdm.auto import tqdm

    from ..engine.work import make_units

    run = jobs[0].run  # protocol, limit, classes: the same for every method
    todo = [i for i in range(run.num) if any(not j.store.done(i) for j in jobs)]
    logger.info("%s: %d images, %d to do for some method", dataset.name, run.num, len(todo))
    bar = tqdm(total=run.num, initial=run.num - len(todo), disable=not output.progress, desc=dataset.name, unit="img")
    device = getattr(getattr(jobs[0].segmenter, "backbone", None), "device", "cpu")
    try:
        for unit in make_units(todo, engine.batch_size) if todo else []:
            unit = [int(i) for i in unit]
            active = [j for j in jobs if j.todo(unit)]
            decoded = load_unit(dataset, run.proto, unit)
            loaded = [entry for entry in decoded if len(entry) == 4]
            segs: dict[str, list[Any]] = {j.run.spec.name: [] for j in active}
            seconds = 0.0
            if loaded:
                queries, generator = unit_queries(jobs[0].ctx, loaded, device)
                t0 = time.perf_counter()
                segs = multi.segment_batch(
                    queries, generator=generator, return_errors=True, methods=[j.run.spec.name for j in active]
                )
                seconds = (time.perf_counter() - t0) / len(loaded)
            for job in active:
                for rec in unit_records(job.ctx, decoded, segs[job.run.spec.name], seconds):
                    if not job.store.done(rec["index"]):
                        job.store.add(rec)
                        job.add(rec)
            bar.update(len(unit))
            if output.progress:
                bar.set_postfix({j.run.spec.name: _miou(j.acc) for j in jobs})
    finally:
        bar.close()


def _miou(acc: MetricAccumulator) -> str:
    s = acc.result()
    return f"{100 * s.miou:.1f}" if s.miou == s.miou else "-"
