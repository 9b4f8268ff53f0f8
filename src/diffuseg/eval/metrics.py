"""Segmentation metrics: contingency histograms, the matching protocols, mIoU and accuracy.

Every image is reduced once to a contingency histogram ``hist[c, k]`` = number of pixels with
ground-truth class ``c`` and predicted id ``k`` (one `np.bincount`, no Python loop over
classes). All matching protocols are computed from these histograms, so one stored run can
be scored under every protocol:

``none``
    Predicted ids are class ids (open-vocabulary methods). Plain confusion matrix; predicted
    ids >= num_classes count as false negatives only.
``hungarian-per-image``
    Exactly the DiffSeg / DiffCut code (``utils.py::hungarian_matching``, adapted from PiCIE):
    per image, ``linear_sum_assignment(hist, maximize=True)`` on a C x max(C, K) histogram
    with K = max predicted id + 1; TP, FP, FN summed over the dataset; pixels of unmatched
    predicted segments count as false negatives only.
``hungarian-dataset``
    STEGO / PiCIE: the histograms are summed over the dataset (predicted ids are global
    cluster ids) and matched once; the same TP/FP/FN rules.
``diffcut-background``
    DiffCut's many-to-one background rule (``eval_diffcut.py`` l.126-139, used for VOC,
    Context and COCO-Object): per image, Hungarian on the foreground classes only; every
    predicted id that is not the partner of a foreground class present in the image is merged
    into one background segment; then per-image Hungarian on all classes. It reads the ground
    truth to decide what is background, so it is generous; compare only with itself.

mIoU is the mean over classes of TP / (TP + FP + FN), skipping classes where that is 0/0
(``np.nanmean`` as in the reference code). Pixel accuracy is sum(TP) / valid pixels.

Pixels whose ground truth is ``ignore_index`` never count. Prediction pixels equal to -1 mean
"not predicted" (outside the region the method saw); they count as false negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "MATCHINGS",
    "ImageCounts",
    "MetricAccumulator",
    "Scores",
    "contingency",
    "confusion_matrix",
    "hungarian_per_image",
    "match_counts",
    "score",
]

logger = logging.getLogger(__name__)

MATCHINGS = ("none", "hungarian-per-image", "hungarian-dataset", "diffcut-background")


def _check_matching(matching: str, background_class: int | None, num_classes: int) -> None:
    if matching not in MATCHINGS:
        raise ValueError(f"`matching` must be one of {MATCHINGS}, got {matching!r}.")
    if matching == "diffcut-background":
        if background_class is None or not 0 <= background_class < num_classes:
            raise ValueError(
                f"`background_class` must be a class id in [0, {num_classes}) for matching "
                f"'diffcut-background', got {background_class!r}."
            )


@dataclass
class ImageCounts:
    """One image reduced to what every metric needs.

    Attributes:
        hist: int64 (C, K): pixels of ground-truth class c predicted as id k (valid GT only).
        unpredicted: int64 (C,): valid GT pixels the prediction left out (prediction -1).
        pred_ids: int64 (M,): the predicted ids present anywhere in the image, ascending
            (also on ignored pixels, as ``np.unique(pred)`` in DiffCut's background rule).
    """

    hist: np.ndarray
    unpredicted: np.ndarray
    pred_ids: np.ndarray

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.hist.shape[0])

    @property
    def num_pixels(self) -> int:
        """Valid (non-ignored) ground-truth pixels."""
        return int(self.hist.sum() + self.unpredicted.sum())

    def to_record(self) -> dict[str, Any]:
        """A compact JSON-serialisable form (sparse histogram)."""
        rows, cols = np.nonzero(self.hist)
        up = np.nonzero(self.unpredicted)[0]
        return {
            "k": int(self.hist.shape[1]),
            "rows": rows.tolist(),
            "cols": cols.tolist(),
            "n": self.hist[rows, cols].tolist(),
            "unpredicted": [[int(c), int(self.unpredicted[c])] for c in up],
            "pred_ids": self.pred_ids.tolist(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], num_classes: int) -> ImageCounts:
        """Inverse of `to_record`."""
        hist = np.zeros((num_classes, int(record["k"])), dtype=np.int64)
        hist[
            np.asarray(record["rows"], dtype=np.int64), np.asarray(record["cols"], dtype=np.int64)
        ] = np.asarray(record["n"], dtype=np.int64)
        unpredicted = np.zeros(num_classes, dtype=np.int64)
        for c, n in record["unpredicted"]:
            unpredicted[c] = n
        return cls(hist, unpredicted, np.asarray(record["pred_ids"], dtype=np.int64))


def contingency(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> ImageCounts:
    """Reduce one prediction / ground-truth pair to an `ImageCounts` with one bincount.

    Args:
        pred: integer array (H, W) of predicted ids >= 0, or -1 for "not predicted".
        gt: integer array (H, W) of class ids in [0, num_classes) or `ignore_index`.
        num_classes: C.
        ignore_index: ground-truth value that never counts; must lie outside [0, C).

    Raises:
        ValueError: on a shape mismatch, predicted ids < -1, a non-integer array, or ground-truth
            values that are neither a class id nor `ignore_index` (the message lists them).
    """
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"`ignore_index` must lie outside the class range [0, {num_classes}), "
            f"got {ignore_index}."
        )
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"`pred` shape {pred.shape} differs from `gt` shape {gt.shape}.")
    for name, arr in (("pred", pred), ("gt", gt)):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"`{name}` must be an integer array, got dtype {arr.dtype}.")
    if gt.size == 0:
        return ImageCounts(
            np.zeros((num_classes, 0), np.int64),
            np.zeros(num_classes, np.int64),
            np.zeros(0, np.int64),
        )
    pmin, pmax = int(pred.min()), int(pred.max())
    if pmin < -1:
        raise ValueError(f"`pred` ids must be >= 0 (or -1 for not predicted), got {pmin}.")
    g = gt
    gmin, gmax = int(g.min()), int(g.max())  # cheap on the label's own (often uint8) dtype
    c = num_classes
    if ignore_index < 0:
        if gmax >= c or (gmin < 0 and bool(np.any((g < 0) & (g != ignore_index)))):
            _raise_bad_gt(g, c, ignore_index)
        if gmin < 0:
            g = np.where(g == ignore_index, c, g)  # ignore -> the spare row c
        rows, spare = c + 1, c
    else:
        if gmin < 0 or gmax > max(ignore_index, c - 1):
            _raise_bad_gt(g, c, ignore_index)
        rows, spare = max(gmax, c - 1) + 1, ignore_index
    # one bincount over all pixels; rows >= c (ignored GT) are dropped afterwards.
    # Column 0 holds "not predicted" (-1) only when some pixel is -1; otherwise id k is column k.
    shift = 1 if pmin < 0 else 0
    width = pmax + 1 + shift
    flat = np.multiply(g, width, dtype=np.int64)  # (H, W) int64, no separate cast pass
    np.add(flat, pred, out=flat, casting="unsafe")
    if shift:
        flat += 1
    counts = np.bincount(flat.ravel(), minlength=rows * width).reshape(rows, width)
    if rows > c:
        extra = np.nonzero(counts[c:].sum(axis=1))[0] + c
        if any(int(v) != spare for v in extra):
            _raise_bad_gt(g, c, ignore_index)
    present = np.nonzero(counts[:, shift:].sum(axis=0))[0]
    if shift:
        unpredicted = counts[:c, 0].copy()
    else:
        unpredicted = np.zeros(c, dtype=np.int64)
    return ImageCounts(
        hist=np.ascontiguousarray(counts[:c, shift:]),
        unpredicted=unpredicted,
        pred_ids=present.astype(np.int64),
    )


def _raise_bad_gt(g: np.ndarray, num_classes: int, ignore_index: int) -> None:
    bad = np.unique(g[((g < 0) | (g >= num_classes)) & (g != ignore_index)])
    raise ValueError(
        f"`gt` has values {bad[:10].tolist()} outside the class range [0, {num_classes}) that "
        f"are not `ignore_index` ({ignore_index})."
    )


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """The (C, C) confusion matrix ``m[gt, pred]`` for class-valued predictions.

    Predicted ids >= C and -1 are dropped (they belong to no class column).
    """
    hist = contingency(pred, gt, num_classes, ignore_index).hist
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    k = min(num_classes, hist.shape[1])
    out[:, :k] = hist[:, :k]
    return out


def match_counts(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian-match one (C, K) histogram the way the DiffSeg/DiffCut code does.

    The histogram is zero-padded to (C, max(C, K)) and matched with
    ``linear_sum_assignment(..., maximize=True)``.

    Returns:
        tp, fp, fn (each int64 (C,)) and col (int64 (C,)): the predicted id matched to each class.
    """
    c, k = hist.shape
    if k < c:
        hist = np.pad(hist, ((0, 0), (0, c - k)))
    row, col = linear_sum_assignment(hist, maximize=True)
    tp = hist[row, col]
    fn = hist.sum(axis=1) - tp
    fp = hist[:, col].sum(axis=0) - tp  # only matched columns make false positives
    return tp, fp, fn, col


def _direct_counts(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c, k = hist.shape
    sq = np.zeros((c, c), dtype=np.int64)
    sq[:, : min(c, k)] = hist[:, : min(c, k)]
    tp = np.diag(sq).copy()
    return tp, sq.sum(axis=0) - tp, hist.sum(axis=1) - tp


def _background_merge(counts: ImageCounts, background_class: int) -> np.ndarray:
    """DiffCut's many-to-one background relabelling, applied to the histogram.

    Returns the (C, K') histogram of the relabelled prediction.
    """
    hist = counts.hist
    c, k = hist.shape
    fg = np.array([i for i in range(c) if i != background_class], dtype=np.int64)
    fg_hist = hist[fg]
    if k < len(fg):
        fg_hist = np.pad(fg_hist, ((0, 0), (0, len(fg) - k)))
    _, col = linear_sum_assignment(fg_hist, maximize=True)
    # as in eval_diffcut.py: a foreground class is "assigned" if its row of the
    # column-reordered histogram has any pixel
    assigned_rows = np.nonzero(fg_hist[:, col].max(axis=1) > 0)[0]
    assigned = {int(col[i]) for i in assigned_rows}
    background = [int(p) for p in counts.pred_ids if int(p) not in assigned]
    if not background:
        return hist
    merged = np.zeros((c, k + 1), dtype=np.int64)  # bg label = max id + 1
    merged[:, :k] = hist
    merged[:, k] = hist[:, background].sum(axis=1)
    merged[:, background] = 0
    return merged


@dataclass
class Scores:
    """Metric values and the counts they come from (all per class arrays are (C,))."""

    matching: str
    miou: float
    pixel_accuracy: float
    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    num_pixels: int
    num_images: int

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; NaN IoUs (class never seen nor predicted) become None."""
        iou = [None if np.isnan(v) else float(v) for v in self.iou]
        out: dict[str, Any] = {
            "matching": self.matching,
            "miou": None if np.isnan(self.miou) else float(self.miou),
            "pixel_accuracy": None if np.isnan(self.pixel_accuracy) else float(self.pixel_accuracy),
            "iou": iou,
            "num_pixels": self.num_pixels,
            "num_images": self.num_images,
            "tp": self.tp.tolist(),
            "fp": self.fp.tolist(),
            "fn": self.fn.tolist(),
        }
        if class_names is not None:
            out["iou_by_class"] = dict(zip(class_names, iou, strict=True))
        return out


@dataclass
class MetricAccumulator:
    """Accumulates `ImageCounts` and scores them under one matching protocol.

    Args:
        num_classes: C.
        matching: one of `MATCHINGS`.
        background_class: class id of "background" (only for ``diffcut-background``).
    """

    num_classes: int
    matching: str = "hungarian-per-image"
    background_class: int | None = None
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    hist: np.ndarray = field(init=False)
    num_pixels: int = field(init=False, default=0)
    num_images: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        _check_matching(self.matching, self.background_class, self.num_classes)
        c = self.num_classes
        self.tp, self.fp, self.fn = (np.zeros(c, np.int64) for _ in range(3))
        self.hist = np.zeros((c, 0), np.int64)

    def add(self, counts: ImageCounts) -> None:
        """Add one image."""
        if counts.num_classes != self.num_classes:
            raise ValueError(
                f"counts have {counts.num_classes} classes, the accumulator {self.num_classes}."
            )
        self.num_images += 1
        self.num_pixels += counts.num_pixels
        self.fn += counts.unpredicted
        if self.matching in ("none", "hungarian-dataset"):
            k = counts.hist.shape[1]
            if k > self.hist.shape[1]:
                self.hist = np.pad(self.hist, ((0, 0), (0, k - self.hist.shape[1])))
            self.hist[:, :k] += counts.hist
            return
        hist = counts.hist
        if self.matching == "diffcut-background":
            hist = _background_merge(counts, int(self.background_class))  # type: ignore[arg-type]
        tp, fp, fn, _ = match_counts(hist)
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def result(self) -> Scores:
        """The scores of everything added so far."""
        tp, fp, fn = self.tp.copy(), self.fp.copy(), self.fn.copy()
        if self.matching == "none":
            a, b, c = _direct_counts(self.hist)
        elif self.matching == "hungarian-dataset":
            a, b, c, _ = match_counts(self.hist)
        else:
            a = b = c = 0
        tp, fp, fn = tp + a, fp + b, fn + c
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (tp + fp + fn)
            miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
            acc = float(tp.sum() / self.num_pixels) if self.num_pixels else float("nan")
        return Scores(self.matching, miou, acc, iou, tp, fp, fn, self.num_pixels, self.num_images)


def score(
    counts: Iterable[ImageCounts],
    num_classes: int,
    matching: str = "hungarian-per-image",
    background_class: int | None = None,
) -> Scores:
    """Score a sequence of `ImageCounts` under `matching` (see the module docstring)."""
    acc = MetricAccumulator(num_classes, matching, background_class)
    for c in counts:
        acc.add(c)
    return acc.result()


def hungarian_per_image(
    preds: Iterable[np.ndarray] | np.ndarray,
    gts: Iterable[np.ndarray] | np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """mIoU and pixel accuracy with per-image Hungarian matching (DiffSeg/DiffCut protocol).

    Args:
        preds: predicted id maps, each integer (H, W) with ids >= 0 (a (B, H, W) array works).
        gts: ground-truth maps, each integer (H, W) in [0, num_classes) or `ignore_index`.
        num_classes: C.
        ignore_index: ground-truth value that never counts.

    Returns:
        ``{"miou": float, "pixel_accuracy": float, "iou": list of C floats (NaN where a class
        was neither present nor matched), "tp"/"fp"/"fn": lists of C ints}``.

    Raises:
        ValueError: on different numbers of predictions and labels, or any bad pair.
    """
    acc = MetricAccumulator(num_classes, "hungarian-per-image")
    n_pred = 0
    for n_pred, (p, g) in enumerate(zip(preds, gts, strict=True), start=1):  # noqa: B007
        acc.add(contingency(p, g, num_classes, ignore_index))
    if n_pred == 0:
        raise ValueError("`preds` and `gts` are empty.")
    s = acc.result()
    return {
        "miou": s.miou,
        "pixel_accuracy": s.pixel_accuracy,
        "iou": s.iou.tolist(),
        "tp": s.tp.tolist(),
        "fp": s.fp.tolist(),
        "fn": s.fn.tolist(),
    }
