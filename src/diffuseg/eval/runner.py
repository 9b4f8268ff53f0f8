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

import dataclasses
import logging
import numbers
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from ..outputs import check_out_dir
from .metrics import MATCHINGS, ImageCounts, MetricAccumulator
from .options import EngineOptions, OutputOptions
from .protocols import Protocol, get_protocol
from .report import build_report, write_report
from .settings import BACKGROUND_SWEEP, CLASS_SETTINGS
from .store import ResultStore, check_results_file
from .units import BACKGROUND_FIELD as _BACKGROUND_FIELD
from .units import (
    UnitContext,
    _query,  # noqa: F401 (moved to units; importable from here as before)
    _safe,
    check_query_classes,
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


def default_matching(open_vocabulary: bool) -> str:
    """``none`` for open-vocabulary methods (labels are class names), else per-image Hungarian."""
    return "none" if open_vocabulary else "hungarian-per-image"


def run_name(dataset: str, method: str, protocol: str) -> str:
    """File stem of a run's results: ``<dataset>_<method>_<protocol>``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}_{method}_{protocol}")


def check_tune_background(method: Any, values: Sequence[float] | None) -> tuple[float, ...] | None:
    """The background scores to sweep for `method` (a name or `MethodSpec`), as floats; None = no sweep.

    Raises:
        ValueError: naming `tune_background`, if `values` is empty or not numbers, or the method's
            config has no field ``background_score``.
    """
    from ..methods import get_method

    if values is None:
        return None
    spec = get_method(method)
    fields = [f.name for f in dataclasses.fields(spec.config_cls)]
    if _BACKGROUND_FIELD not in fields:
        raise ValueError(
            f"`tune_background` sweeps the config field {_BACKGROUND_FIELD!r}, which method {spec.name!r} "
            f"does not have (its fields: {fields}); tune only methods with a background score."
        )
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v for v in values):
        raise ValueError(f"`tune_background` must be a non-empty sequence of numbers, got {values!r}.")
    return tuple(float(v) for v in values)


def _describe_filter(class_filter: Any) -> Any:
    """A class filter as the fingerprint records it: its name, or its dataclass fields."""
    if isinstance(class_filter, str):
        return class_filter
    if dataclasses.is_dataclass(class_filter):
        return {"name": getattr(class_filter, "name", type(class_filter).__name__), **dataclasses.asdict(class_filter)}
    return repr(class_filter)


@dataclasses.dataclass(frozen=True)
class _Run:
    """One run's settings, resolved and checked: what scoring, the fingerprint and the report share."""

    spec: Any
    proto: Protocol
    matching: str
    background_class: int | None
    class_names: list[str]
    query_classes: tuple[tuple[str, ...], ...] | None
    classes: str
    sweep: tuple[float, ...] | None
    seed: int | None
    num: int
    name: str


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
    engine = _options(engine, EngineOptions, "engine")
    output = _options(output, OutputOptions, "output")
    run = _resolve(dataset, method, engine, output, protocol, matching, background_class, classes,
                   tune_background, limit, seed, class_names)  # fmt: skip
    _check_folders(dataset, run, output)
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
    fingerprint = _fingerprint(dataset, run, segmenter, model_id, extra)
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
    report = _report(store, dataset, run, fingerprint)
    write_report(report, out_dir / f"{run.name}.json", out_dir / f"{run.name}.md")
    return report


def check_output(
    dataset: SegmentationDataset,
    method: str,
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
) -> Path:
    """Check, before any model is loaded, what `evaluate` with these arguments would refuse
    about its output, and create its folders.

    `output.out_dir` and `output.save_predictions` must be folders that can be written; an
    existing results file is continued or replaced only when `output` says so, and one being
    resumed must come from a run of the same dataset, split, method, protocol, classes, sweep
    and seed (the model's name and config preset, and the class filter, are compared by
    `evaluate`, which knows them); the predictions of the images to score (for datasets that
    list their ``ids``) are replaced only with `output.overwrite` or `output.resume`. Nothing is
    written but the folders.

    Returns:
        The results file ``OUT_DIR/NAME.jsonl``.

    Raises:
        ValueError: naming `out_dir` or `save_predictions` (a file, a folder that cannot be
            created or written), or what `evaluate` raises for its other arguments.
        FileExistsError / ResumeMismatchError: see `ResultStore`; `OutputExistsError`:
            predictions of these images exist in `output.save_predictions`.
    """
    engine = _options(engine, EngineOptions, "engine")
    output = _options(output, OutputOptions, "output")
    run = _resolve(dataset, method, engine, output, protocol, matching, background_class, classes,
                   tune_background, limit, seed, class_names)  # fmt: skip
    _check_folders(dataset, run, output)
    path = Path(output.out_dir) / f"{run.name}.jsonl"
    check_results_file(path, _run_fingerprint(dataset, run), resume=output.resume, overwrite=output.overwrite)
    return path


def _check_folders(dataset: SegmentationDataset, run: _Run, output: OutputOptions) -> None:
    """The output folders can be written (they are created); no saved prediction of the images
    to score is replaced unless `output` says so (datasets with ``ids`` only: the others name an
    image only once it is read)."""
    from ..outputs import OutputExistsError, existing_outputs

    check_out_dir(output.out_dir, "out_dir")
    if output.save_predictions is None:
        return
    check_out_dir(output.save_predictions, "save_predictions")
    ids = getattr(dataset, "ids", None)
    if output.overwrite or output.resume or ids is None:
        return
    for i in range(run.num):
        found = existing_outputs(output.save_predictions, _safe(str(ids[i])))
        if found:
            raise OutputExistsError(
                f"`save_predictions` {output.save_predictions} holds predictions of these images already "
                f"(e.g. {found[0]}); pass `overwrite=True` to replace them or choose another folder."
            )


def _options(value: Any, cls: type, argument: str) -> Any:
    """`value`, an instance of `cls`, or ``cls()`` for None."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ValueError(f"`{argument}` must be a diffuseg.eval.{cls.__name__} or None, got {value!r}.")
    return value


def _resolve(
    dataset: SegmentationDataset,
    method: str,
    engine: EngineOptions,
    output: OutputOptions,
    protocol: str | Protocol,
    matching: str | None,
    background_class: int | None,
    classes: str,
    tune_background: Sequence[float] | None,
    limit: int | None,
    seed: int | None,
    query_classes: Sequence[Sequence[str]] | None = None,
) -> _Run:
    """Check `evaluate`'s arguments and resolve its defaults (in the order `evaluate` documents)."""
    from ..engine.seeding import resolve_seed
    from ..methods import get_method

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer or None, got {limit!r}.")
    if classes not in CLASS_SETTINGS:
        raise ValueError(f"`classes` must be one of {CLASS_SETTINGS}, got {classes!r}.")
    if seed is not None or engine.engine == "ray":
        seed = resolve_seed(seed)
    n_total = len(dataset)
    if n_total == 0:
        raise ValueError(f"dataset {dataset.name!r} is empty; nothing to evaluate.")
    proto = get_protocol(protocol)
    spec = get_method(method)
    sweep = check_tune_background(spec, tune_background)
    matching = matching or default_matching(spec.open_vocabulary)
    if matching not in MATCHINGS:
        raise ValueError(f"`matching` must be one of {MATCHINGS}, got {matching!r}.")
    if background_class is None:
        background_class = getattr(dataset, "background_class", None)
    class_names = list(dataset.class_names)
    MetricAccumulator(len(class_names), matching, background_class)  # validates the combination
    query_classes = check_query_classes(query_classes, class_names)
    return _Run(
        spec=spec,
        proto=proto,
        matching=matching,
        background_class=background_class,
        class_names=class_names,
        query_classes=query_classes,
        classes=classes,
        sweep=sweep,
        seed=seed,
        num=n_total if limit is None else min(limit, n_total),
        name=output.name or run_name(dataset.name, spec.name, proto.name),
    )


def _fingerprint(
    dataset: SegmentationDataset, run: _Run, segmenter: Any, model_id: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed run must share with the results file it continues (`ResultStore`)."""
    return {
        **_run_fingerprint(dataset, run),
        "config": dataclasses.asdict(segmenter.config),
        "preset": getattr(segmenter, "preset", None),
        **({"class_filter": _describe_filter(extra["class_filter"])} if "class_filter" in extra else {}),
        "model": model_id,
    }


def _run_fingerprint(dataset: SegmentationDataset, run: _Run) -> dict[str, Any]:
    """The part of the fingerprint known before the model is loaded (`check_output`)."""
    return {
        "dataset": dataset.name,
        "split": getattr(dataset, "split", None),
        "num_classes": len(run.class_names),
        "method": run.spec.name,
        "classes": run.classes,
        **({"class_names": [list(c) for c in run.query_classes]} if run.query_classes is not None else {}),
        "tune_background": list(run.sweep) if run.sweep is not None else None,
        "protocol": run.proto.record(),
        **({"seed": run.seed} if run.seed is not None else {}),
    }


def _score(
    dataset: SegmentationDataset,
    run: _Run,
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


def _report(store: ResultStore, dataset: SegmentationDataset, run: _Run, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The run's report, from the records of its results file and its fingerprint only (the
    method's config, preset, model name and class filter as `_fingerprint` records them), so
    `diffuseg.eval.render.render_report` rebuilds it from a results file without a model."""
    config = fingerprint["config"]
    return build_report(
        store.ordered(run.num),
        class_names=run.class_names,
        dataset=dataset,
        method=run.spec,
        config=config,
        protocol=run.proto,
        matching=run.matching,
        background_class=run.background_class,
        model_id=fingerprint.get("model"),
        num_requested=run.num,
        results_file=store.path,
        preset=fingerprint.get("preset"),
        classes=run.classes,
        class_filter=fingerprint.get("class_filter"),
        background_tuning=(
            None
            if run.sweep is None
            else {"field": _BACKGROUND_FIELD, "values": run.sweep, "default": config[_BACKGROUND_FIELD]}
        ),
    )
