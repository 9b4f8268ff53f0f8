"""One evaluation run's settings, resolved and checked once: `resolve_run` turns `evaluate`'s
arguments into a `RunSettings`; `run_fingerprint` / `full_fingerprint` give what a resumed results file
must share; `check_output` / `check_folders` refuse what would be overwritten, before any model
loads; `run_report` builds the report from a results file and its fingerprint. `evaluate`,
`evaluate_methods` and `render_report` all go through these.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from ..outputs import check_out_dir
from .metrics import MATCHINGS, MetricAccumulator
from .options import EngineOptions, OutputOptions
from .protocols import Protocol, get_protocol
from .report import build_report
from .settings import CLASS_SETTINGS
from .store import ResultStore, check_results_file
from .units import BACKGROUND_FIELD as _BACKGROUND_FIELD
from .units import _safe, check_query_classes

__all__ = [
    "RunSettings",
    "as_options",
    "check_folders",
    "check_output",
    "check_tune_background",
    "default_matching",
    "describe_filter",
    "full_fingerprint",
    "resolve_run",
    "run_fingerprint",
    "run_name",
    "run_report",
]


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


def describe_filter(class_filter: Any) -> Any:
    """A class filter as the fingerprint records it: its name, or its dataclass fields."""
    if isinstance(class_filter, str):
        return class_filter
    if dataclasses.is_dataclass(class_filter):
        return {"name": getattr(class_filter, "name", type(class_filter).__name__), **dataclasses.asdict(class_filter)}
    return repr(class_filter)


@dataclasses.dataclass(frozen=True)
class RunSettings:
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
    engine = as_options(engine, EngineOptions, "engine")
    output = as_options(output, OutputOptions, "output")
    run = resolve_run(dataset, method, engine, output, protocol, matching, background_class, classes,
                   tune_background, limit, seed, class_names)  # fmt: skip
    check_folders(dataset, run, output)
    path = Path(output.out_dir) / f"{run.name}.jsonl"
    check_results_file(path, run_fingerprint(dataset, run), resume=output.resume, overwrite=output.overwrite)
    return path


def check_folders(dataset: SegmentationDataset, run: RunSettings, output: OutputOptions) -> None:
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


def as_options(value: Any, cls: type, argument: str) -> Any:
    """`value`, an instance of `cls`, or ``cls()`` for None."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ValueError(f"`{argument}` must be a diffuseg.eval.{cls.__name__} or None, got {value!r}.")
    return value


def resolve_run(
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
) -> RunSettings:
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
    return RunSettings(
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


def full_fingerprint(
    dataset: SegmentationDataset, run: RunSettings, segmenter: Any, model_id: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed run must share with the results file it continues (`ResultStore`)."""
    return {
        **run_fingerprint(dataset, run),
        "config": dataclasses.asdict(segmenter.config),
        "preset": getattr(segmenter, "preset", None),
        **({"class_filter": describe_filter(extra["class_filter"])} if "class_filter" in extra else {}),
        "model": model_id,
    }


def run_fingerprint(dataset: SegmentationDataset, run: RunSettings) -> dict[str, Any]:
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


def run_report(
    store: ResultStore, dataset: SegmentationDataset, run: RunSettings, fingerprint: dict[str, Any]
) -> dict[str, Any]:
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
