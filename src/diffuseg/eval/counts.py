"""Reduce a prediction / label pair to a contingency histogram with one `np.bincount`.

``hist[c, k]`` counts pixels of ground-truth class ``c`` predicted as id ``k``. Everything the
metrics need (every matching protocol) is computed from these histograms, so one stored run
can be scored under every protocol. Ground-truth ``ignore_index`` pixels never count;
prediction -1 marks pixels the method did not cover (they count as false negatives).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ImageCounts", "contingency", "confusion_matrix"]

logger = logging.getLogger(__name__)

#: predicted ids must be below this (the dense (C, K) histogram stays small)
MAX_PRED_ID = 1 << 16


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
        hist[np.asarray(record["rows"], dtype=np.int64), np.asarray(record["cols"], dtype=np.int64)] = np.asarray(
            record["n"], dtype=np.int64
        )
        unpredicted = np.zeros(num_classes, dtype=np.int64)
        for c, n in record["unpredicted"]:
            unpredicted[c] = n
        return cls(hist, unpredicted, np.asarray(record["pred_ids"], dtype=np.int64))


def contingency(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> ImageCounts:
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
        raise ValueError(f"`ignore_index` must lie outside the class range [0, {num_classes}), got {ignore_index}.")
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
    if pmax >= MAX_PRED_ID:
        raise ValueError(
            f"`pred` ids go up to {pmax}; at most {MAX_PRED_ID - 1} is supported. Relabel the "
            f"segments to consecutive ids (e.g. `diffuseg.ops.masks.relabel_sequential`)."
        )
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


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The (C, C) confusion matrix ``m[gt, pred]`` for class-valued predictions.

    Predicted ids >= C and -1 are dropped (they belong to no class column).
    """
    hist = contingency(pred, gt, num_classes, ignore_index).hist
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    k = min(num_classes, hist.shape[1])
    out[:, :k] = hist[:, :k]
    return out
