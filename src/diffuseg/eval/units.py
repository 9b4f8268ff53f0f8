"""Scoring images in units: the per-unit work of `evaluate`, shared by its engines.

A unit is the images of one `segment_batch` call (``batch_size`` of them, in dataset order):
`load_unit` reads and frames them (the protocol's crop and resize), `score_unit` segments them,
reduces each prediction to contingency counts against its label and returns the records the
`ResultStore` keeps. The local engine calls both in the driver; the ray engine calls
`load_unit` on CPU tasks and `score_unit` in its actors.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..datasets import IGNORE_INDEX, SampleReadError
from .metrics import contingency
from .protocols import Protocol, prepare, resize_nearest, to_score_grid
from .report import sweep_key

__all__ = [
    "UnitContext",
    "check_query_classes",
    "load_unit",
    "score_unit",
    "unit_queries",
    "unit_records",
    "skip_unit",
    "scored_segmentation",
    "BACKGROUND_FIELD",
]

logger = logging.getLogger(__name__)

#: The config field `tune_background` sweeps: the constant score of the background class that
#: competes in the per-pixel argmax.
BACKGROUND_FIELD = "background_score"


def _names_to_classes(seg: Any, class_names: list[str]) -> np.ndarray | None:
    """Lookup label id -> class id for a segmentation that names its labels (-1: unknown name)."""
    if not seg.names:
        return None
    index = {n.strip().lower(): i for i, n in enumerate(class_names)}
    return np.array([index.get(str(n).strip().lower(), -1) for n in seg.names], dtype=np.int64)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "sample"


@dataclasses.dataclass(frozen=True)
class UnitContext:
    """What scoring a unit of images needs besides the segmenter (plain data: Ray ships it)."""

    proto: Protocol
    class_names: list[str]
    matching: str
    classes: str
    sweep: tuple[float, ...] | None
    pred_dir: str | None
    overwrite_predictions: bool
    generator: Any
    seed: int | None
    #: the names each query carries per dataset class, (display name, synonym, ...); None = `class_names`
    query_classes: tuple[tuple[str, ...], ...] | None = None

    @property
    def vocabulary(self) -> list[tuple[str, ...]]:
        """Per dataset class, the names its queries carry (display name first)."""
        if self.query_classes is not None:
            return list(self.query_classes)
        return [(n,) for n in self.class_names]

    @property
    def display_names(self) -> list[str]:
        """Per dataset class, the display name a method labels it with (mapped back by position)."""
        return [c[0] for c in self.vocabulary]


def load_unit(dataset: Any, proto: Protocol, unit: Sequence[int]) -> list[tuple[Any, ...]]:
    """Per index: (index, sample, image, label) after the protocol, or (index, record) of an
    unreadable sample."""
    out: list[tuple[Any, ...]] = []
    for i in unit:
        try:
            out.append((i, *_load(dataset, i, proto)))
        except SampleReadError as e:
            logger.warning("skipping sample %d: %s", i, e)
            out.append((i, {"index": i, "id": _sample_id(dataset, i), "status": "skipped", "error": str(e)}))
    return out


def skip_unit(decoded: list[tuple[Any, ...]], reason: str) -> list[dict[str, Any]]:
    """The records of a unit that is not scored (its worker kept dying): each sample skipped
    with `reason`."""
    return [
        entry[1]
        if len(entry) == 2
        else {"index": entry[0], "id": str(entry[1].id), "status": "skipped", "error": reason}
        for entry in decoded
    ]


def score_unit(segmenter: Any, ctx: UnitContext, decoded: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The records of one unit of images (`_load_unit`): segment them in one `segment_batch`
    call, score each, sweep the background score, save the predictions."""
    loaded = [entry for entry in decoded if len(entry) == 4]
    if not loaded:
        return unit_records(ctx, decoded, [], 0.0)
    queries, generator = unit_queries(ctx, loaded, getattr(getattr(segmenter, "backbone", None), "device", "cpu"))
    t0 = time.perf_counter()
    segs = segmenter.segment_batch(queries, generator=generator, return_errors=True)
    seconds = (time.perf_counter() - t0) / len(loaded)
    swept = None
    if ctx.sweep:

        def sweep_counts(j: int, seg: Any) -> dict[str, Any] | None:
            """The counts record of `seg`, a re-segmentation of `loaded[j]` (None if it failed)."""
            if isinstance(seg, Exception):
                logger.warning("re-segmenting sample %d failed: %s", loaded[j][0], seg)
                return None
            i, sample, _, label = loaded[j]
            return _score_one(i, sample, label, seg, ctx.proto, ctx.display_names, ctx.matching, 0.0)["counts"]

        ok = [not isinstance(seg, Exception) for seg in segs]
        swept = _sweep(segmenter, queries, ok, ctx.sweep, sweep_counts)
    return unit_records(ctx, decoded, segs, seconds, swept)


def unit_queries(ctx: UnitContext, loaded: list[tuple[Any, ...]], device: Any) -> tuple[list[Any], Any]:
    """The `Query` of each loaded sample of a unit (the protocol's framing, the classes of
    ``ctx.classes``) and the generator(s) to segment them with: with ``ctx.seed`` one per image,
    seeded from (seed, image id) on `device`, else ``ctx.generator``."""
    queries = [
        _query(sample, image, ctx.proto, _query_classes(ctx.classes, ctx.vocabulary, label))
        for _, sample, image, label in loaded
    ]
    generator = ctx.generator
    if ctx.seed is not None:
        from ..engine.seeding import image_generators

        generator = image_generators(ctx.seed, [q.id for q in queries], device)
    return queries, generator


def unit_records(
    ctx: UnitContext,
    decoded: list[tuple[Any, ...]],
    segs: Sequence[Any],
    seconds: float,
    swept: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The records of a unit whose loaded samples were segmented into `segs` (one result or
    exception per loaded sample, in order): unreadable samples and failed segmentations are
    skipped records, the others scored (and saved with ``ctx.pred_dir``)."""
    records = [entry[1] for entry in decoded if len(entry) == 2]
    loaded = [entry for entry in decoded if len(entry) == 4]
    for j, ((i, sample, image, label), seg) in enumerate(zip(loaded, segs, strict=True)):
        if isinstance(seg, Exception):  # this image failed alone (too small, rejected...)
            logger.warning("skipping sample %d: %s", i, seg)
            records.append({"index": i, "id": str(sample.id), "status": "skipped", "error": str(seg)})
            continue
        rec = _score_one(i, sample, label, seg, ctx.proto, ctx.display_names, ctx.matching, seconds)
        if swept is not None:
            rec["sweep"] = swept[j]
        if "class_filter" in seg.meta:
            rec["class_filter"] = seg.meta["class_filter"]
        if ctx.pred_dir is not None:  # before the record, so a resumed run rewrites it
            scored = scored_segmentation(seg, label.shape)
            scored.save(ctx.pred_dir, _safe(sample.id), image=image, overwrite=ctx.overwrite_predictions)
        records.append(rec)
    return records


def check_query_classes(
    query_classes: Sequence[Sequence[str]] | None, class_names: list[str]
) -> tuple[tuple[str, ...], ...] | None:
    """`evaluate`'s `class_names` as a tuple of name tuples, one per dataset class (None stays None).

    Raises:
        ValueError: naming `class_names` if it does not hold one entry per dataset class, or an
            entry is not a non-empty sequence of names.
    """
    if query_classes is None:
        return None
    out = tuple((c,) if isinstance(c, str) else tuple(c) for c in query_classes)
    if len(out) != len(class_names) or any(not c or not all(isinstance(n, str) for n in c) for c in out):
        raise ValueError(
            f"`class_names` must give the names of each of the dataset's {len(class_names)} classes "
            f"(first {class_names[:3]}...), in its order, each a non-empty sequence of names; got "
            f"{len(out)} entries (first {list(out[:3])})."
        )
    from ..labeling.vocabulary import parse_classes

    return tuple(parse_classes(out))  # names distinct across classes, as every Query checks


def _query_classes(setting: str, classes: list[Any], label: np.ndarray) -> list[Any]:
    """The classes (names, or name tuples with synonyms) the `Query` of an image with ground
    truth `label` carries under `setting` (one of `CLASS_SETTINGS`, validated by `evaluate`)."""
    if setting == "all":
        return classes
    if setting == "gt-labels":
        present = np.unique(label[label != IGNORE_INDEX])
        return [classes[int(i)] for i in present if 0 <= int(i) < len(classes)]
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
    original = getattr(segmenter.config, BACKGROUND_FIELD)
    calls = getattr(segmenter, "model_calls", None)
    try:
        for v in values:
            # segment_batch, not resegment: one failing query must fail alone, as in the main pass
            segmenter.configure(**{BACKGROUND_FIELD: v})
            segs = segmenter.segment_batch(queries, return_errors=True)
            for j, seg in enumerate(segs):
                if ok[j]:
                    out[j][sweep_key(v)] = score(j, seg)
    finally:
        segmenter.configure(**{BACKGROUND_FIELD: original})
    if calls is not None and getattr(segmenter, "model_calls", calls) != calls:
        logger.warning("re-segmenting with other `%s` values ran the model again", BACKGROUND_FIELD)
    return out


def _query(sample: Any, image: Any, proto: Protocol, class_names: list[Any]) -> Any:
    """The `Query` of one prepared sample: the protocol's framing and `class_names` (each a
    name, or a tuple (display name, synonym, ...))."""
    from ..plan import Query

    return Query(
        image=image,
        classes=tuple((n,) if isinstance(n, str) else tuple(n) for n in class_names)
        or None,  # None: no classes (an all-ignore label map)
        caption=(sample.meta.get("caption") or "").strip() or None,  # a dataset's empty caption is none
        id=str(sample.id),
        size=proto.query_size,
        resize_mode=proto.resize_mode,
        label_size=proto.label_size,
        window=proto.window,
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


def _label_frame(seg: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The prediction on the frame of the label it is scored against (the image the method was
    given, after the protocol's crop and resize): the method's label ids, -1 where the model saw
    nothing."""
    pred = seg.to_input_frame(fill=-1).cpu().numpy()  # (H, W) int64, -1 outside the crop box
    if pred.shape != tuple(shape):  # a method that ignores the requested size
        logger.debug("resizing prediction %s to label %s", pred.shape, tuple(shape))
        pred = resize_nearest(pred, tuple(shape), "floor")
    return pred


def scored_segmentation(seg: Any, shape: tuple[int, ...]) -> Any:
    """`seg` on the frame it is scored in (`shape`, the label's (H, W)): what
    ``--save-predictions`` writes, for every method and protocol, so a saved label map lies on
    its image and scores again to the image's record (after the protocol's ``score_size``
    downsampling, which both sides get).

    ``meta["frame"]`` becomes "input" (the image the method was given). Pixels the model saw
    nothing of (outside its crop box) get one more label id, named "(not predicted)" when the
    labels have names, with score 0 when they have scores, and ``meta["not_predicted"]`` says
    which: read it back as -1 to score.
    """
    import torch

    pred = _label_frame(seg, shape)
    meta = {**seg.meta, "frame": "input"}
    names, scores = seg.names, seg.scores
    if (pred < 0).any():
        k = max(seg.num_segments, int(pred.max()) + 1)
        pred = np.where(pred < 0, k, pred)
        meta["not_predicted"] = k
        if names is not None:
            names = list(names[:k]) + ["(not predicted)"]
        if scores is not None:  # no confidence in what was not predicted
            scores = torch.cat([scores[:k].float().cpu(), torch.zeros(max(k - len(scores), 0) + 1)])
    labels = torch.from_numpy(pred)
    return dataclasses.replace(seg, labels=labels, names=names, scores=scores, meta=meta, extras=dict(seg.extras))


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
    pred = _label_frame(seg, label.shape)
    if matching == "none":
        lut = _names_to_classes(seg, class_names)
        if lut is not None:
            pred = np.where(pred >= 0, lut[np.clip(pred, 0, len(lut) - 1)], -1)
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
