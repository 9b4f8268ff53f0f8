"""The evaluation loop: dataset -> protocol -> method -> contingency -> durable records -> report.

`evaluate` scores one method on one dataset. Every image's result is appended to a JSONL file
as soon as it is computed (`ResultStore`), so an interrupted run continues with
``output=OutputOptions(..., resume=True)`` and nothing is recomputed or lost. The report is built from those records
only, so a resumed run's report equals an uninterrupted one's (timings aside).

Each image's `Query` carries the class names of the `classes` setting (`CLASS_SETTINGS`). With
``tune_background`` every image is also re-segmented, from the recorded features, at each value
of the background class's constant score (`BACKGROUND_SWEEP`), and the report adds the mIoU of
each value: tuned on the evaluated split, as the reference's evaluation scripts do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    check_output,
    check_tune_background,
    default_matching,
    full_fingerprint,
    resolve_run,
    run_name,
    run_report,
)
from .settings import BACKGROUND_SWEEP, CLASS_SETTINGS
from .store import ResultStore
from .units import (
    UnitContext,
    _query,  # noqa: F401 (moved to units; importable from here as before)
    load_unit,
    score_unit,
)

__all__ = [
    "evaluate",
    "check_output",
    "EngineOptions",
    "OutputOptions",
    "default_matching",
    "run_name",
    "CLASS_SETTINGS",
    "BACKGROUND_SWEEP",
    "check_tune_background",
]

logger = logging.getLogger(__name__)


def evaluate(
    dataset: SegmentationDataset,
    method: str,
    *,
    backbone: Any = None,
    model_id: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    resources: dict[str, Any] | None = None,
    protocol: str | Protocol = "full",
    matching: str | None = None,
    background_class: int | None = None,
    classes: str = "all",
    class_names: Sequence[Sequence[str]] | None = None,
    class_filter: Any = None,
    tune_background: Sequence[float] | None = None,
    limit: int | None = None,
    generator: Any = None,
    seed: int | None = None,
    engine: EngineOptions | None = None,
    output: OutputOptions | None = None,
) -> dict[str, Any]:
    """Score `method` on `dataset` and write ``NAME.jsonl``, ``NAME.json`` and ``NAME.md``.

    Args:
        dataset: any `SegmentationDataset` (labels int (H, W), 255 = ignore).
        method: registry name of the method.
        backbone: a `DiffusionBackbone`, or None for methods that need only the image.
        model_id: model name written into the report.
        config_overrides: method config fields to change (on top of the model's preset).
        resources: the method's extra models (see `diffuseg.Segmenter`).
        protocol: a preset name (``diffseg``, ``diffcut``, ``full``) or a `Protocol`. It reaches
            the method through each `Query` (crop, model input size, scoring size); protocols
            that fix the model input size override the method's `image_size`.
        matching: one of `MATCHINGS`; None = ``none`` for open-vocabulary methods, else
            ``hungarian-per-image``. The report also lists the other applicable matchings.
        background_class: background class id for ``diffcut-background`` (default: the
            dataset's ``background_class``).
        classes: the class names of each image's `Query`, one of `CLASS_SETTINGS`: ``all`` (every
            dataset class: true open vocabulary) or ``gt-labels`` (the classes present in the
            image's ground truth, ignoring 255: the papers' weakly supervised setting, an oracle;
            e.g. colour k-means with the true K). Recorded in the fingerprint and the report.
        class_filter: a class filter (a name of `diffuseg.labeling.filters.FILTERS` or a filter
            object, e.g. `DiffusionFilter(score="attention")`) between each image's
            classes and the method (with ``classes="all"``: the filter decides which of the
            dataset's classes each image gets); each record lists the classes it kept.
        tune_background: background scores to sweep (e.g. `BACKGROUND_SWEEP`), for methods whose
            config has the field ``background_score``: each image is re-segmented at each value
            from the recorded features (no model pass) and scored like the main prediction; the
            report's ``background_tuning`` gives each value's mIoU and the best, tuned on the
            evaluated split. The main metrics stay those of the config's value.
        limit: evaluate only the first `limit` images (>= 1).
        generator: torch.Generator for methods that add noise (drawn per model call, in order;
            ignored when `seed` is given).
        seed: per-image noise: each image's generator is seeded from (`seed`, its id)
            (`diffuseg.engine.seeding`), so results do not depend on the engine, the batch an
            image lands in or a resume (recorded in the fingerprint). Engine ``ray`` without a
            seed uses `diffuseg.engine.seeding.DEFAULT_SEED`.
        engine: where and in which batches the images are segmented (`EngineOptions`; default
            the local engine, one image per backbone pass).
        output: where the results go, resuming, progress (`OutputOptions`; default ``results/``).

    Returns:
        The report dict (also written as JSON and Markdown).

    Raises:
        ValueError: bad `limit`, `matching`, `classes`, `tune_background` (or a method without
            ``background_score``), `engine` or `output` (not the options classes), an `out_dir`
            or `save_predictions` that is a file or cannot be written, an empty dataset, a
            sample whose image and label sizes differ or whose labels are out of range.
        FileExistsError / ResumeMismatchError: see `ResultStore`; `OutputExistsError` (a
            `FileExistsError`): predictions of these images exist (see `check_output`).
    """
    engine = as_options(engine, EngineOptions, "engine")
    output = as_options(output, OutputOptions, "output")
    run = resolve_run(dataset, method, engine, output, protocol, matching, background_class, classes,
                   tune_background, limit, seed, class_names)  # fmt: skip
    check_folders(dataset, run, output)
    extra: dict[str, Any] = {"resources": resources} if resources else {}
    if class_filter not in (None, "none"):
        extra["class_filter"] = class_filter
    kwargs = {"batch_size": engine.batch_size, **extra, **(config_overrides or {})}
    factory = engine.segmenter_factory
    if factory is None:
        from ..segmenter import Segmenter as factory  # noqa: N813
    # the local engine's segmenter; with ray it checks the config and fingerprints the run, and
    # each actor builds its own
    segmenter = factory(backbone, run.spec, **kwargs)
    worker = (factory, engine.backbone_loader or backbone, run.spec.name, kwargs)
    fingerprint = full_fingerprint(dataset, run, segmenter, model_id, extra)
    out_dir = Path(output.out_dir)
    store = ResultStore(out_dir / f"{run.name}.jsonl", fingerprint, resume=output.resume, overwrite=output.overwrite)
    ctx = UnitContext(
        proto=run.proto,
        class_names=run.class_names,
        query_classes=run.query_classes,
        matching=run.matching,
        classes=run.classes,
        sweep=run.sweep,
        pred_dir=str(output.save_predictions) if output.save_predictions is not None else None,
        overwrite_predictions=output.overwrite or output.resume,
        generator=generator,
        seed=run.seed,
    )
    _score(dataset, run, store, segmenter, worker, ctx, engine, output)
    report = run_report(store, dataset, run, fingerprint)
    write_report(report, out_dir / f"{run.name}.json", out_dir / f"{run.name}.md")
    return report


def _score(
    dataset: SegmentationDataset,
    run: RunSettings,
    store: ResultStore,
    segmenter: Any,
    worker: tuple[Callable[..., Any], Any, str, dict[str, Any]],
    ctx: UnitContext,
    engine: EngineOptions,
    output: OutputOptions,
) -> None:
    """Score the images the store does not hold yet, on the engine, storing each record as it
    comes (progress bar with the running mIoU, mAcc and aAcc; `output.on_record`)."""
    num_classes = len(run.class_names)
    acc = MetricAccumulator(num_classes, run.matching, run.background_class)
    for rec in store.ordered(run.num):
        if rec["status"] == "ok":
            acc.add(ImageCounts.from_record(rec["counts"], num_classes))
    todo = [i for i in range(run.num) if not store.done(i)]
    logger.info("%s: %d images, %d to do", run.name, run.num, len(todo))

    from tqdm.auto import tqdm

    bar = tqdm(total=run.num, initial=run.num - len(todo), disable=not output.progress, desc=run.name, unit="img")

    def finish(rec: dict[str, Any]) -> None:
        i = rec["index"]
        store.add(rec)
        if rec["status"] == "ok":
            acc.add(ImageCounts.from_record(rec["counts"], num_classes))
        bar.update(1)
        if output.progress and rec["status"] == "ok":
            bar.set_postfix_str(progress_postfix(acc.result()))
        if output.on_record is not None:
            output.on_record(i, rec)

    from ..engine.work import make_units

    units = [[int(i) for i in unit] for unit in make_units(todo, engine.batch_size)] if todo else []
    try:
        if engine.engine == "local":
            for unit in units:
                for rec in score_unit(segmenter, ctx, load_unit(dataset, run.proto, unit)):
                    finish(rec)
        elif units:
            from .ray_units import run_eval_units

            run_eval_units(units, dataset, worker, ctx, engine.ray_options, lambda recs: [finish(r) for r in recs])
    finally:
        bar.close()


def progress_postfix(scores: Any) -> str:
    """The progress bar's running metrics, e.g. ``mIoU 41.2 mAcc 55.0 aAcc 80.3`` (``-`` if undefined)."""
    return " ".join(
        f"{name} {'-' if v != v else f'{100 * v:.1f}'}"
        for name, v in (("mIoU", scores.miou), ("mAcc", scores.macc), ("aAcc", scores.aacc))
    )
