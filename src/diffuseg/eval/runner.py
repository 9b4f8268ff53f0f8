"""The evaluation loop: dataset -> protocol -> method -> contingency -> durable records -> report.

`evaluate` scores one method on one dataset. Every image's result is appended to a JSONL file
as soon as it is computed (`ResultStore`), so an interrupted run continues with
``resume=True`` and nothing is recomputed or lost. The report is built from those records
only, so a resumed run's report equals an uninterrupted one's (timings aside).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import IGNORE_INDEX, SegmentationDataset
from .folder import SampleReadError
from .metrics import MATCHINGS, ImageCounts, MetricAccumulator, contingency
from .protocols import Protocol, get_protocol, prepare, resize_nearest, to_score_grid
from .report import build_report, write_report
from .store import ResultStore

__all__ = ["evaluate", "default_matching", "run_name"]

logger = logging.getLogger(__name__)


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
    oracle_classes: bool = False,
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
        oracle_classes: give each image's `Query` only the classes present in its ground truth
            (an oracle, for measuring a method apart from its guess of the classes; e.g. colour
            k-means with the true K). Recorded in the results' fingerprint and the report.

    Returns:
        The report dict (also written as JSON and Markdown).

    Raises:
        ValueError: bad `limit`, `matching`, `batch_size`, an empty dataset, a sample whose
            image and label sizes differ or whose labels are out of range.
        FileExistsError / ResumeMismatchError: see `ResultStore`.
    """
    from ..methods import get_method

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer or None, got {limit!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    n_total = len(dataset)
    if n_total == 0:
        raise ValueError(f"dataset {dataset.name!r} is empty; nothing to evaluate.")
    proto = get_protocol(protocol)
    spec = get_method(method)
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
    extra = {"resources": resources} if resources else {}
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
        "oracle_classes": bool(oracle_classes),
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
                _query(sample, image, proto, class_names, label if oracle_classes else None)
                for _, sample, image, label in loaded
            ]
            t0 = time.perf_counter()
            segs = segmenter.segment_batch(queries, generator=generator, return_errors=True)
            seconds = (time.perf_counter() - t0) / max(len(loaded), 1)
            for (i, sample, image, label), seg in zip(loaded, segs, strict=True):
                if isinstance(seg, Exception):  # this image failed alone (too small, rejected...)
                    logger.warning("skipping sample %d: %s", i, seg)
                    finish(i, {"index": i, "id": str(sample.id), "status": "skipped", "error": str(seg)})
                    continue
                rec = _score_one(i, sample, label, seg, proto, class_names, matching, seconds)
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
        oracle_classes=bool(oracle_classes),
    )
    write_report(report, out_dir / f"{name}.json", out_dir / f"{name}.md")
    return report


def _query(sample: Any, image: Any, proto: Protocol, class_names: list[str], oracle: np.ndarray | None = None) -> Any:
    """The `Query` of one prepared sample: the protocol's framing, the dataset's class names (or,
    with an `oracle` label map, the classes present in it)."""
    from ..plan import Query

    if oracle is not None:
        present = np.unique(oracle[oracle != IGNORE_INDEX])
        class_names = [class_names[int(i)] for i in present if 0 <= int(i) < len(class_names)]
    return Query(
        image=image,
        classes=tuple((n,) for n in class_names),
        caption=sample.meta.get("caption"),
        id=str(sample.id),
        size=proto.input_size,
        resize_mode=proto.resize_mode,
        label_size=proto.score_size,
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
