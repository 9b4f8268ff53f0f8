"""The evaluation loop: dataset -> protocol -> method -> contingency -> durable records -> report.

`evaluate` scores one method on one dataset. Every image's result is appended to a JSONL file
as soon as it is computed (`ResultStore`), so an interrupted run continues with
``resume=True`` and nothing is recomputed or lost. The report is built from those records
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
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from .metrics import MATCHINGS, ImageCounts, MetricAccumulator
from .protocols import Protocol, get_protocol
from .report import build_report, write_report
from .store import ResultStore
from .units import BACKGROUND_FIELD as _BACKGROUND_FIELD
from .units import (
    UnitContext,
    _query,  # noqa: F401 (moved to units; importable from here as before)
    load_unit,
    score_unit,
)

__all__ = [
    "evaluate",
    "default_matching",
    "run_name",
    "CLASS_SETTINGS",
    "BACKGROUND_SWEEP",
    "check_tune_background",
]

logger = logging.getLogger(__name__)

#: The class names each image's `Query` carries (`evaluate`'s ``classes``): ``all``, every class
#: of the dataset (true open vocabulary); ``gt-labels``, the image-level ground-truth labels (the
#: classes present in its label map), the papers' weakly supervised setting.
CLASS_SETTINGS = ("all", "gt-labels")

#: The background scores DiffSegmenter's evaluation scripts sweep (start 30, end 75, in
#: hundredths): 0.30, 0.31, ..., 0.74.
BACKGROUND_SWEEP = tuple(v / 100 for v in range(30, 75))


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


def evaluate(
    dataset: SegmentationDataset,
    method: str,
    *,
    backbone: Any = None,
    config_overrides: dict[str, Any] | None = None,
    protocol: str | Protocol = "full",
    matching: str | None = None,
    background_class: int | None = None,
    out_dir: str | os.PathLike = "results",
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    batch_size: int = 1,
    save_predictions: str | os.PathLike | None = None,
    model_id: str | None = None,
    progress: bool = False,
    generator: Any = None,
    segmenter_factory: Callable[..., Any] | None = None,
    resources: dict[str, Any] | None = None,
    on_record: Callable[[int, dict[str, Any]], None] | None = None,
    classes: str = "all",
    tune_background: Sequence[float] | None = None,
    class_filter: Any = None,
    seed: int | None = None,
    engine: str = "local",
    ray_options: Any = None,
    backbone_loader: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Score `method` on `dataset` and write ``NAME.jsonl``, ``NAME.json`` and ``NAME.md``.

    Args:
        dataset: any `SegmentationDataset` (labels int (H, W), 255 = ignore).
        method: registry name of the method.
        backbone: a `DiffusionBackbone`, or None for methods that need only the image.
        config_overrides: method config fields to change (on top of the model's preset).
        protocol: a preset name (``diffseg``, ``diffcut``, ``full``) or a `Protocol`. It reaches
            the method through each `Query` (crop, model input size, scoring size); protocols
            that fix the model input size override the method's `image_size`.
        matching: one of `MATCHINGS`; None = ``none`` for open-vocabulary methods, else
            ``hungarian-per-image``. The report also lists the other applicable matchings.
        background_class: background class id for ``diffcut-background`` (default: the
            dataset's ``background_class``).
        out_dir: folder for the results; NAME defaults to ``<dataset>_<method>_<protocol>``.
        resume: continue an existing results file; finished images are not recomputed.
        overwrite: discard an existing results file.
        limit: evaluate only the first `limit` images (>= 1).
        batch_size: images per backbone pass.
        save_predictions: folder for per-image label PNG / overlay / JSON, or None.
        model_id: model name written into the report.
        progress: show a tqdm progress bar with ETA and the running mIoU.
        generator: torch.Generator for methods that add noise (drawn per model call, in order;
            ignored when `seed` is given).
        seed: per-image noise: each image's generator is seeded from (`seed`, its id)
            (`diffuseg.engine.seeding`), so results do not depend on the engine, the batch an
            image lands in or a resume (recorded in the fingerprint). Engine ``ray`` without a
            seed uses `diffuseg.engine.seeding.DEFAULT_SEED`.
        engine: one of `diffuseg.engine.ENGINES`: ``local`` (this process) or ``ray`` (an actor
            pool on a Ray cluster, `ray_options`: the batches of ``batch_size`` images are those
            of the local engine, so with equal `batch_size` the records, and the report, are
            the local engine's, timings aside). The records go to the same resumable store.
        ray_options: a `diffuseg.engine.ray_engine.RayOptions` (default: one actor on a local
            Ray instance).
        backbone_loader: engine ``ray``: a picklable zero-argument callable each actor loads its
            backbone with (default: the actors get a copy of `backbone`, through Ray's object
            store).
        segmenter_factory: ``(backbone, method, batch_size=..., **overrides) -> segmenter``;
            default `diffuseg.segmenter.Segmenter`.
        on_record: called with (index, record) after each image is stored (tests use it to
            interrupt a run).
        resources: the method's extra models (see `diffuseg.Segmenter`).
        classes: the class names of each image's `Query`, one of `CLASS_SETTINGS`: ``all`` (every
            dataset class: true open vocabulary) or ``gt-labels`` (the classes present in the
            image's ground truth, ignoring 255: the papers' weakly supervised setting, an oracle;
            e.g. colour k-means with the true K). Recorded in the fingerprint and the report.
        tune_background: background scores to sweep (e.g. `BACKGROUND_SWEEP`), for methods whose
            config has the field ``background_score``: each image is re-segmented at each value
            from the recorded features (no model pass) and scored like the main prediction; the
            report's ``background_tuning`` gives each value's mIoU and the best, tuned on the
            evaluated split. The main metrics stay those of the config's value.
        class_filter: a class filter (a name of `diffuseg.labeling.filters.FILTERS` or a filter
            object, e.g. `DiffusionFilter(score="attention")`) between each image's
            classes and the method (with ``classes="all"``: the filter decides which of the
            dataset's classes each image gets); each record lists the classes it kept.

    Returns:
        The report dict (also written as JSON and Markdown).

    Raises:
        ValueError: bad `limit`, `matching`, `batch_size`, `classes`, `tune_background` (or a method
            without ``background_score``), an empty dataset, a sample whose image and label sizes
            differ or whose labels are out of range.
        FileExistsError / ResumeMismatchError: see `ResultStore`.
    """
    from ..methods import get_method

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer or None, got {limit!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if classes not in CLASS_SETTINGS:
        raise ValueError(f"`classes` must be one of {CLASS_SETTINGS}, got {classes!r}.")
    from ..engine import ENGINES
    from ..engine.seeding import resolve_seed

    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {ENGINES}, got {engine!r}.")
    if seed is not None or engine == "ray":
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
    num_classes = len(class_names)
    MetricAccumulator(num_classes, matching, background_class)  # validates the combination

    if segmenter_factory is None:
        from ..segmenter import Segmenter as segmenter_factory  # noqa: N813
    extra: dict[str, Any] = {"resources": resources} if resources else {}
    if class_filter not in (None, "none"):
        extra["class_filter"] = class_filter
    kwargs = {"batch_size": batch_size, **extra, **(config_overrides or {})}
    # the local engine's segmenter; with ray it checks the config and fingerprints the run, and
    # each actor builds its own
    segmenter = segmenter_factory(backbone, spec, **kwargs)
    config = segmenter.config

    n = n_total if limit is None else min(limit, n_total)
    name = name or run_name(dataset.name, spec.name, proto.name)
    out_dir = Path(out_dir)
    fingerprint = {
        "dataset": dataset.name,
        "split": getattr(dataset, "split", None),
        "num_classes": num_classes,
        "method": spec.name,
        "config": dataclasses.asdict(config),
        "preset": getattr(segmenter, "preset", None),
        "classes": classes,
        "tune_background": list(sweep) if sweep is not None else None,
        **({"class_filter": _describe_filter(class_filter)} if "class_filter" in extra else {}),
        "protocol": dataclasses.asdict(proto),
        "model": model_id,
        **({"seed": seed} if seed is not None else {}),
    }
    store = ResultStore(out_dir / f"{name}.jsonl", fingerprint, resume=resume, overwrite=overwrite)
    acc = MetricAccumulator(num_classes, matching, background_class)
    for rec in store.ordered(n):
        if rec["status"] == "ok":
            acc.add(ImageCounts.from_record(rec["counts"], num_classes))
    todo = [i for i in range(n) if not store.done(i)]
    logger.info("%s: %d images, %d to do", name, n, len(todo))

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - len(todo), disable=not progress, desc=name, unit="img")
    unit_ctx = UnitContext(
        proto=proto,
        class_names=class_names,
        matching=matching,
        classes=classes,
        sweep=sweep,
        pred_dir=str(save_predictions) if save_predictions is not None else None,
        overwrite_predictions=overwrite or resume,
        generator=generator,
        seed=seed,
    )

    def finish(rec: dict[str, Any]) -> None:
        i = rec["index"]
        store.add(rec)
        if rec["status"] == "ok":
            acc.add(ImageCounts.from_record(rec["counts"], num_classes))
        bar.update(1)
        if progress and rec["status"] == "ok":
            s = acc.result()
            bar.set_postfix(mIoU=f"{100 * s.miou:.1f}" if s.miou == s.miou else "-")
        if on_record is not None:
            on_record(i, rec)

    from ..engine.work import make_units

    units = [[int(i) for i in unit] for unit in make_units(todo, batch_size)] if todo else []
    try:
        if engine == "local":
            for unit in units:
                for rec in score_unit(segmenter, unit_ctx, load_unit(dataset, proto, unit)):
                    finish(rec)
        elif units:
            from .ray_units import run_eval_units

            worker = (segmenter_factory, backbone_loader or backbone, spec.name, kwargs)
            run_eval_units(units, dataset, worker, unit_ctx, ray_options, lambda recs: [finish(r) for r in recs])
    finally:
        bar.close()

    report = build_report(
        store.ordered(n),
        class_names=class_names,
        dataset=dataset,
        method=spec,
        config=config,
        protocol=proto,
        matching=matching,
        background_class=background_class,
        model_id=model_id,
        num_requested=n,
        results_file=store.path,
        preset=getattr(segmenter, "preset", None),
        classes=classes,
        class_filter=fingerprint.get("class_filter"),
        background_tuning=(
            None
            if sweep is None
            else {"field": _BACKGROUND_FIELD, "values": sweep, "default": getattr(config, _BACKGROUND_FIELD)}
        ),
    )
    write_report(report, out_dir / f"{name}.json", out_dir / f"{name}.md")
    return report
