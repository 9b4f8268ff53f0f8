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
    Differences from the reference script: DiffCut runs PAMR between the relabelling and the
    final matching (here a method's own refinement runs before scoring); its VOC loader turns
    boundary pixels (255) into background (here they stay ignored); its background is the last
    class id (here the dataset's, e.g. 0 for VOC), so equal-cost assignments may break ties
    differently.

As in the reference code, a class absent from an image can be matched to a leftover predicted
segment and then collects false positives.

Under every matching the per-class TP / FP / FN give the metrics of mmsegmentation and
detectron2 (`class_metrics`): per-class IoU and accuracy, mIoU, mAcc, fwIoU and aAcc (= the
stored reports' ``pixel_accuracy``, the same number).

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

from .counts import ImageCounts, confusion_matrix, contingency
from .settings import MATCHINGS

__all__ = [
    "MATCHINGS",
    "ImageCounts",
    "MetricAccumulator",
    "Scores",
    "class_metrics",
    "contingency",
    "confusion_matrix",
    "hungarian_per_image",
    "match_counts",
    "score",
]

logger = logging.getLogger(__name__)


def _check_matching(matching: str, background_class: int | None, num_classes: int) -> None:
    if matching not in MATCHINGS:
        raise ValueError(f"`matching` must be one of {MATCHINGS}, got {matching!r}.")
    if matching == "diffcut-background":
        if background_class is None or not 0 <= background_class < num_classes:
            raise ValueError(
                f"`background_class` must be a class id in [0, {num_classes}) for matching "
                f"'diffcut-background', got {background_class!r}."
            )


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


def _nanmean(values: np.ndarray) -> float:
    """Mean of the values that are not NaN (``np.nanmean``), NaN if there are none (no warning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def class_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
    """Per-class IoU and accuracy, mIoU, mAcc, fwIoU and aAcc from per-class TP / FP / FN.

    With area_label = TP + FN (ground-truth pixels of the class), union = TP + FP + FN and
    intersect = TP, the definitions are mmsegmentation's (v1.2.2,
    ``mmseg/evaluation/metrics/iou_metric.py``: ``intersect_and_union`` l.164-200,
    ``total_area_to_metrics`` l.253 aAcc = sum(intersect) / sum(area_label), l.257-258
    IoU = intersect / union and Acc = intersect / area_label; ``compute_metrics`` l.136 mIoU / mAcc
    = ``np.nanmean`` of them)
    and detectron2's (``detectron2/evaluation/sem_seg_evaluation.py``, commit 02b5c4e, l.186-200:
    mACC over classes with pos_gt > 0, fwIoU = sum(iou * pos_gt / sum(pos_gt)) over classes with a
    valid IoU, pACC = sum(tp) / sum(pos_gt)). Edge cases:

    * a class absent from the ground truth and never predicted (0 / 0): IoU and accuracy NaN,
      skipped by the means (mmseg's nanmean; torchmetrics' macro average skips it too);
    * absent from the ground truth but predicted (FP only): IoU 0, counted in mIoU as in mmseg
      and torchmetrics. detectron2 instead leaves its IoU undefined (``iou_valid`` requires
      pos_gt > 0, l.195), so its mIoU differs from this one exactly when some class has
      false positives but no ground truth (never over a full benchmark split, where every
      class occurs). Its accuracy is NaN (0 / 0) in both libraries; torchmetrics'
      ``MulticlassAccuracy(average="macro")`` counts it as 0 instead;
    * fwIoU weighs by ground-truth frequency, so classes without ground truth add nothing, and
      mmseg and detectron2 agree;
    * ignored ground truth never reaches the counts; pixels a method did not predict (-1) and
      predicted ids that no class is matched to are false negatives of their true class.

    Args:
        tp, fp, fn: per-class counts, integer (C,).

    Returns:
        ``{"iou", "acc"}``: float64 (C,), NaN where undefined; ``{"miou", "macc", "fwiou",
        "aacc"}``: floats in [0, 1], NaN when no class (no pixel, for fwIoU and aAcc) has a value.
    """
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    area_label = tp + fn  # mmseg total_area_label, detectron2 pos_gt
    union = tp + fp + fn  # mmseg total_area_union = pred + label - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
        acc = tp / area_label
    total = float(area_label.sum())
    present = area_label > 0  # here union >= area_label > 0, so the IoU is defined
    return {
        "iou": iou,
        "acc": acc,
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "fwiou": float(np.sum(iou[present] * area_label[present]) / total) if total else float("nan"),
        "aacc": float(tp.sum() / total) if total else float("nan"),
    }


def _json_float(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


@dataclass
class Scores:
    """Metric values under one matching and the counts they come from (see `class_metrics`).

    Attributes:
        matching: one of `MATCHINGS`.
        tp, fp, fn: int64 (C,): per-class counts summed over the images.
        num_pixels: valid ground-truth pixels (equals ``(tp + fn).sum()`` under every matching:
            each valid pixel is the TP or the FN of its true class).
        num_images: images added.
        iou, acc: float64 (C,): per-class IoU and accuracy, NaN where undefined.
        miou, macc, fwiou: mean IoU, mean accuracy (over the defined values), frequency-weighted IoU.
        pixel_accuracy: sum(TP) / valid pixels: mmseg's aAcc and detectron2's pACC (also `aacc`;
            stored reports use this name, so it stays the field).
    """

    matching: str
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    num_pixels: int
    num_images: int
    iou: np.ndarray = field(init=False)
    acc: np.ndarray = field(init=False)
    miou: float = field(init=False)
    macc: float = field(init=False)
    fwiou: float = field(init=False)
    pixel_accuracy: float = field(init=False)

    def __post_init__(self) -> None:
        m = class_metrics(self.tp, self.fp, self.fn)
        self.iou, self.acc, self.miou, self.macc, self.fwiou = m["iou"], m["acc"], m["miou"], m["macc"], m["fwiou"]
        self.pixel_accuracy = m["aacc"]

    @property
    def aacc(self) -> float:
        """mmseg's name for `pixel_accuracy` (the same value)."""
        return self.pixel_accuracy

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; undefined values (NaN) become None.

        ``pixel_accuracy`` and ``aacc`` hold the same number (the first for reports written
        before aAcc was added); ``iou`` / ``acc`` are per class, and with `class_names` also
        ``iou_by_class`` / ``acc_by_class``.
        """
        iou = [_json_float(v) for v in self.iou]
        acc = [_json_float(v) for v in self.acc]
        out: dict[str, Any] = {
            "matching": self.matching,
            "miou": _json_float(self.miou),
            "macc": _json_float(self.macc),
            "fwiou": _json_float(self.fwiou),
            "aacc": _json_float(self.pixel_accuracy),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "iou": iou,
            "acc": acc,
            "num_pixels": self.num_pixels,
            "num_images": self.num_images,
            "tp": self.tp.tolist(),
            "fp": self.fp.tolist(),
            "fn": self.fn.tolist(),
        }
        if class_names is not None:
            out["iou_by_class"] = dict(zip(class_names, iou, strict=True))
            out["acc_by_class"] = dict(zip(class_names, acc, strict=True))
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
            raise ValueError(f"counts have {counts.num_classes} classes, the accumulator {self.num_classes}.")
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
        return Scores(self.matching, tp + a, fp + b, fn + c, self.num_pixels, self.num_images)


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
    """mIoU, accuracies and fwIoU with per-image Hungarian matching (DiffSeg/DiffCut protocol).

    Args:
        preds: predicted id maps, each integer (H, W) with ids >= 0 (a (B, H, W) array works).
        gts: ground-truth maps, each integer (H, W) in [0, num_classes) or `ignore_index`.
        num_classes: C.
        ignore_index: ground-truth value that never counts.

    Returns:
        ``{"miou", "pixel_accuracy" (= "aacc"), "macc", "fwiou": float, "iou" / "acc": lists of C
        floats (NaN where undefined, see `class_metrics`), "tp"/"fp"/"fn": lists of C ints}``.

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
        "aacc": s.pixel_accuracy,
        "macc": s.macc,
        "fwiou": s.fwiou,
        "iou": s.iou.tolist(),
        "acc": s.acc.tolist(),
        "tp": s.tp.tolist(),
        "fp": s.fp.tolist(),
        "fn": s.fn.tolist(),
    }
