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
import functools
import logging
import numbers
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import IGNORE_INDEX, SegmentationDataset
from .folder import SampleReadError
from .metrics import MATCHINGS, ImageCounts, MetricAccumulator, contingency
from .protocols import Protocol, get_protocol, prepare, resize_nearest, to_score_grid
from .report import build_report, sweep_key, write_report
from .store import ResultStore

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

#: The config field `tune_background` sweeps: the constant score of the background class that
#: competes in the per-pixel argmax.
_BACKGROUND_FIELD = "background_score"


def default_matching(open_vocabulary: bool) -> str:
    """``none`` for open-vocabulary methods (labels are class names), else per-image Hungarian."""
    return "none" if open_vocabulary else "hungarian-per-image"


def run_name(dataset: str, method: str, protocol: str) -> str:
    """File stem of a run's results: ``<dataset>_<method>_<protocol>``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}_{method}_{protocol}")


def _names_to_classes(seg: Any, class_names: list[str]) -> np.ndarray | None:
    """Lookup label id -> class id for a segmentation that names its labels (-1: unknown name)."""
    if not seg.names:
        return None
    index = {n.strip().lower(): i for i, n in enumerate(class_names)}
    return np.array([index.get(str(n).strip().lower(), -1) for n in seg.names], dtype=np.int64)


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "sample"


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
        generator: torch.Generator for methods that add noise.
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
    segmenter = segmenter_factory(backbone, spec, batch_size=batch_size, **extra, **(config_overrides or {}))
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
    pred_dir = Path(save_predictions) if save_predictions is not None else None

    def sweep_counts(loaded: list[Any], j: int, seg: Any) -> dict[str, Any] | None:
        """The counts record of `seg`, a re-segmentation of `loaded[j]` (None if it failed)."""
        if isinstance(seg, Exception):
            logger.warning("re-segmenting sample %d failed: %s", loaded[j][0], seg)
            return None
        i, sample, _, label = loaded[j]
        return _score_one(i, sample, label, seg, proto, class_names, matching, 0.0)["counts"]

    def finish(i: int, rec: dict[str, Any]) -> None:
        store.add(rec)
        if rec["status"] == "ok":
            acc.add(ImageCounts.from_record(rec["counts"], num_classes))
        bar.update(1)
        if progress and rec["status"] == "ok":
            s = acc.result()
            bar.set_postfix(mIoU=f"{100 * s.miou:.1f}" if s.miou == s.miou else "-")
        if on_record is not None:
            on_record(i, rec)

    try:
        for start in range(0, len(todo), batch_size):
            loaded = []
            for i in todo[start : start + batch_size]:
                try:
                    loaded.append((i, *_load(dataset, i, proto)))
                except SampleReadError as e:
                    logger.warning("skipping sample %d: %s", i, e)
                    finish(
                        i,
                        {
                            "index": i,
                            "id": _sample_id(dataset, i),
                            "status": "skipped",
                            "error": str(e),
                        },
                    )
            queries = [
                _query(sample, image, proto, _query_classes(classes, class_names, label))
                for _, sample, image, label in loaded
            ]
            t0 = time.perf_counter()
            segs = segmenter.segment_batch(queries, generator=generator, return_errors=True)
            seconds = (time.perf_counter() - t0) / max(len(loaded), 1)
            ok = [not isinstance(seg, Exception) for seg in segs]
            swept = _sweep(segmenter, queries, ok, sweep, functools.partial(sweep_counts, loaded)) if sweep else None
            for j, ((i, sample, image, label), seg) in enumerate(zip(loaded, segs, strict=True)):
                if isinstance(seg, Exception):  # this image failed alone (too small, rejected...)
                    logger.warning("skipping sample %d: %s", i, seg)
                    finish(i, {"index": i, "id": str(sample.id), "status": "skipped", "error": str(seg)})
                    continue
                rec = _score_one(i, sample, label, seg, proto, class_names, matching, seconds)
                if swept is not None:
                    rec["sweep"] = swept[j]
                if "class_filter" in seg.meta:
                    rec["class_filter"] = seg.meta["class_filter"]
                if pred_dir is not None:  # before the record, so a resumed run rewrites it
                    seg.save(pred_dir, _safe(sample.id), image=image, overwrite=overwrite or resume)
                finish(i, rec)
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


def _query_classes(setting: str, class_names: list[str], label: np.ndarray) -> list[str]:
    """The class names the `Query` of an image with ground truth `label` carries under `setting`
    (one of `CLASS_SETTINGS`, validated by `evaluate`)."""
    if setting == "all":
        return class_names
    if setting == "gt-labels":
        present = np.unique(label[label != IGNORE_INDEX])
        return [class_names[int(i)] for i in present if 0 <= int(i) < len(class_names)]
    raise AssertionError(f"class setting {setting!r} has no branch in `_query_classes`")


def _sweep(
    segmenter: Any,
    queries: list[Any],
    ok: list[bool],
    values: Sequence[float],
    score: Callable[[int, Any], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """Re-segment the last batch at each background score in `values`, from the features the
    segmenter recorded for it (no model pass), then restore the config's own score.

    Returns, per query, ``{sweep_key(v): score(j, segmentation)}`` (empty for queries whose main
    segmentation failed, `ok[j]` False).
    """
    out: list[dict[str, Any]] = [{} for _ in queries]
    original = getattr(segmenter.config, _BACKGROUND_FIELD)
    calls = getattr(segmenter, "model_calls", None)
    try:
        for v in values:
            # segment_batch, not resegment: one failing query must fail alone, as in the main pass
            segmenter.configure(**{_BACKGROUND_FIELD: v})
            segs = segmenter.segment_batch(queries, return_errors=True)
            for j, seg in enumerate(segs):
                if ok[j]:
                    out[j][sweep_key(v)] = score(j, seg)
    finally:
        segmenter.configure(**{_BACKGROUND_FIELD: original})
    if calls is not None and getattr(segmenter, "model_calls", calls) != calls:
        logger.warning("re-segmenting with other `%s` values ran the model again", _BACKGROUND_FIELD)
    return out


def _query(sample: Any, image: Any, proto: Protocol, class_names: list[str]) -> Any:
    """The `Query` of one prepared sample: the protocol's framing and `class_names`."""
    from ..plan import Query

    return Query(
        image=image,
        classes=tuple((n,) for n in class_names) or None,  # None: no classes (an all-ignore label map)
        caption=sample.meta.get("caption"),
        id=str(sample.id),
        size=proto.query_size,
        resize_mode=proto.resize_mode,
        label_size=proto.label_size,
    )


def _sample_id(dataset: Any, index: int) -> str:
    ids = getattr(dataset, "ids", None)
    return str(ids[index]) if ids is not None else str(index)


def _load(dataset: Any, index: int, proto: Protocol) -> tuple[Any, Any, np.ndarray]:
    """Sample `index`, its image and label after the protocol's crop and resize."""
    sample = dataset[index]
    label = np.asarray(sample.label)
    if label.shape != (sample.image.height, sample.image.width):
        where = sample.meta.get("label_path", f"sample {sample.id!r}")
        raise ValueError(
            f"{where}: label is {label.shape[0]}x{label.shape[1]} but the image is "
            f"{sample.image.height}x{sample.image.width} (H x W)."
        )
    image, label = prepare(sample.image, label, proto)
    return sample, image, label


def _score_one(
    index: int,
    sample: Any,
    label: np.ndarray,
    seg: Any,
    proto: Protocol,
    class_names: list[str],
    matching: str,
    seconds: float,
) -> dict[str, Any]:
    """One image's record: the prediction mapped onto the label's frame, reduced to counts."""
    pred = seg.to_input_frame(fill=-1).cpu().numpy()  # (H, W) int64, -1 outside the crop box
    if matching == "none":
        lut = _names_to_classes(seg, class_names)
        if lut is not None:
            pred = np.where(pred >= 0, lut[np.clip(pred, 0, len(lut) - 1)], -1)
    if pred.shape != label.shape:  # a method that ignores the requested size
        logger.debug("resizing prediction %s to label %s", pred.shape, label.shape)
        pred = resize_nearest(pred, label.shape, "floor")
    pred = to_score_grid(pred, proto)
    gt = to_score_grid(label, proto)
    try:
        counts = contingency(pred, gt, len(class_names), IGNORE_INDEX)
    except ValueError as e:
        where = sample.meta.get("label_path", f"sample {sample.id!r}")
        raise ValueError(f"{where}: {e}") from e
    return {
        "index": index,
        "id": str(sample.id),
        "status": "ok",
        "size": [int(label.shape[0]), int(label.shape[1])],
        "num_segments": int(len(counts.pred_ids)),
        "seconds": round(float(seconds), 6),
        "counts": counts.to_record(),
    }
