"""Metrics: hand-computed confusion matrices and matchings, invariances, ignore, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffuseg.eval.metrics import (
    ImageCounts,
    MetricAccumulator,
    confusion_matrix,
    contingency,
    hungarian_per_image,
    score,
)


def _row(*values: int) -> np.ndarray:
    return np.array([values], dtype=np.int64)  # (1, W)


def test_confusion_matrix_hand_computed():
    gt = _row(0, 0, 0, 1, 1, 2, 2, 2)
    pred = _row(0, 0, 1, 1, 1, 2, 0, 2)
    m = confusion_matrix(pred, gt, 3)
    assert m.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    s = score([contingency(pred, gt, 3)], 3, "none")
    assert s.tp.tolist() == [2, 2, 2]
    assert s.fp.tolist() == [1, 1, 0]
    assert s.fn.tolist() == [1, 0, 1]
    assert np.allclose(s.iou, [2 / 4, 2 / 3, 2 / 3])
    assert s.miou == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert s.pixel_accuracy == pytest.approx(6 / 8)


def test_hungarian_per_image_unmatched_segment_is_false_negative_only():
    # gt 0 0 0 1 1 1 / pred 0 0 1 2 2 2: 0<->0 and 1<->2; segment 1 is unmatched
    out = hungarian_per_image([_row(0, 0, 1, 2, 2, 2)], [_row(0, 0, 0, 1, 1, 1)], num_classes=2)
    assert out["tp"] == [2, 3] and out["fn"] == [1, 0] and out["fp"] == [0, 0]
    assert out["iou"] == pytest.approx([2 / 3, 1.0])
    assert out["miou"] == pytest.approx(5 / 6)
    assert out["pixel_accuracy"] == pytest.approx(5 / 6)
    assert set(out) >= {"miou", "pixel_accuracy", "iou"}


def test_hungarian_per_image_sums_counts_over_images():
    preds = [_row(7, 7, 3, 3), _row(1, 1, 1, 0)]
    gts = [_row(0, 0, 1, 1), _row(0, 0, 1, 1)]
    out = hungarian_per_image(preds, gts, num_classes=2)
    # image 1 perfect (4 TP); image 2: 0<->1 (2 TP, 1 FP for class 0), 1<->0 (1 TP, 1 FN)
    assert out["tp"] == [4, 3] and out["fp"] == [1, 0] and out["fn"] == [0, 1]
    assert out["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert out["pixel_accuracy"] == pytest.approx(7 / 8)


def _brute_force(pred: np.ndarray, gt: np.ndarray, c: int) -> tuple[np.ndarray, ...] | None:
    """Per-image rules by exhaustive search (None if the best assignment is not unique)."""
    k = max(c, int(pred.max()) + 1)
    hist = np.zeros((c, k), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g < c:
            hist[g, p] += 1
    best, best_perm, ties = -1, None, 0
    for perm in itertools.permutations(range(k), c):
        total = sum(hist[i, perm[i]] for i in range(c))
        if total > best:
            best, best_perm, ties = total, perm, 1
        elif total == best:
            ties += 1
    if ties > 1:
        return None
    tp = np.array([hist[i, best_perm[i]] for i in range(c)])
    fp = np.array([hist[:, best_perm[i]].sum() for i in range(c)]) - tp
    fn = hist.sum(1) - tp
    return tp, fp, fn


def test_hungarian_per_image_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(30):
        c, k = int(rng.integers(2, 4)), int(rng.integers(2, 6))
        gt = rng.integers(0, c, (6, 7))
        gt[rng.random(gt.shape) < 0.15] = 255
        pred = rng.integers(0, k, (6, 7))
        ref = _brute_force(pred, gt, c)
        if ref is None:
            continue
        out = hungarian_per_image([pred], [gt], c)
        assert out["tp"] == ref[0].tolist() and out["fp"] == ref[1].tolist()
        assert out["fn"] == ref[2].tolist()
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("matching", ["hungarian-per-image", "hungarian-dataset"])
def test_miou_invariant_to_permutation_of_predicted_ids(matching):
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 5, (32, 32)) for _ in range(4)]
    preds = [np.where(rng.random(g.shape) < 0.7, g, rng.integers(0, 5, g.shape)) for g in gts]
    for g in gts:
        g[:3] = 255
    perm = rng.permutation(9)[:5]  # a bijection of 0..4 into 0..8 (ids need not be contiguous)
    base = score([contingency(p, g, 5) for p, g in zip(preds, gts, strict=True)], 5, matching)
    moved = score([contingency(perm[p], g, 5) for p, g in zip(preds, gts, strict=True)], 5, matching)
    assert moved.miou == pytest.approx(base.miou)
    assert moved.pixel_accuracy == pytest.approx(base.pixel_accuracy)
    assert base.miou > 0.5


def test_dataset_level_matching_is_one_global_assignment():
    preds = [_row(0, 0, 1, 1), _row(1, 1, 0, 0)]
    gts = [_row(0, 0, 1, 1), _row(0, 0, 1, 1)]
    counts = [contingency(p, g, 2) for p, g in zip(preds, gts, strict=True)]
    assert score(counts, 2, "hungarian-per-image").miou == pytest.approx(1.0)
    s = score(counts, 2, "hungarian-dataset")
    assert s.tp.tolist() == [2, 2] and s.fp.tolist() == [2, 2] and s.fn.tolist() == [2, 2]
    assert s.miou == pytest.approx(1 / 3)


def test_diffcut_background_rule_merges_unmatched_segments():
    gt = _row(0, 0, 0, 0, 1, 1, 2, 2)  # class 0 = background
    pred = _row(0, 1, 2, 3, 4, 4, 5, 5)
    c = contingency(pred, gt, 3)
    plain = score([c], 3, "hungarian-per-image")
    assert plain.iou.tolist() == pytest.approx([0.25, 1.0, 1.0])
    merged = score([c], 3, "diffcut-background", background_class=0)
    assert merged.iou.tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="background_class"):
        MetricAccumulator(3, "diffcut-background", None)


def test_ignore_pixels_never_count():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 3, (16, 16))
    gt[4:9] = 255
    pred = rng.integers(0, 4, (16, 16))
    other = pred.copy()
    other[4:9] = rng.integers(0, 50, (5, 16))  # anything at ignored pixels
    a, b = contingency(pred, gt, 3), contingency(other, gt, 3)
    assert a.num_pixels == b.num_pixels == 16 * 11
    for m in ("none", "hungarian-per-image", "hungarian-dataset"):
        sa, sb = score([a], 3, m), score([b], 3, m)
        for name in ("tp", "fp", "fn"):
            assert getattr(sa, name).tolist() == getattr(sb, name).tolist(), (m, name)
        assert sa.miou == sb.miou and sa.pixel_accuracy == sb.pixel_accuracy
    only_ignore = contingency(pred, np.full_like(gt, 255), 3)
    assert only_ignore.num_pixels == 0 and only_ignore.hist.sum() == 0
    # a negative ignore index (DiffSeg / DiffCut use -1) works too
    neg = contingency(pred, np.where(gt == 255, -1, gt), 3, ignore_index=-1)
    assert np.array_equal(neg.hist[:, : a.hist.shape[1]], a.hist[:, : neg.hist.shape[1]])


def test_unpredicted_pixels_are_false_negatives():
    gt = _row(0, 0, 1, 1)
    pred = _row(0, -1, 1, -1)
    s = score([contingency(pred, gt, 2)], 2, "hungarian-per-image")
    assert s.tp.tolist() == [1, 1] and s.fn.tolist() == [1, 1] and s.fp.tolist() == [0, 0]
    assert s.pixel_accuracy == pytest.approx(0.5)


def test_record_round_trip():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (20, 20))
    gt[0] = 255
    pred = rng.integers(-1, 9, (20, 20))
    c = contingency(pred, gt, 4)
    back = ImageCounts.from_record(c.to_record(), 4)
    assert np.array_equal(back.hist, c.hist) and np.array_equal(back.unpredicted, c.unpredicted)
    assert np.array_equal(back.pred_ids, c.pred_ids)


def test_bad_input_raises_value_errors():
    gt = _row(0, 1, 7, 255)
    with pytest.raises(ValueError, match=r"values \[7\]"):
        contingency(_row(0, 0, 0, 0), gt, 3)
    with pytest.raises(ValueError, match="shape"):
        contingency(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64), 3)
    with pytest.raises(ValueError, match="integer"):
        contingency(np.zeros((2, 2)), np.zeros((2, 2), np.int64), 3)
    with pytest.raises(ValueError, match=">= 0"):
        contingency(_row(-2, 0, 0, 0), _row(0, 0, 0, 0), 3)
    with pytest.raises(ValueError, match="ignore_index"):
        contingency(_row(0), _row(0), 3, ignore_index=1)
    with pytest.raises(ValueError, match="matching"):
        MetricAccumulator(3, "greedy")
    with pytest.raises(ValueError, match="empty"):
        hungarian_per_image([], [], 3)
    with pytest.raises(ValueError, match="consecutive"):
        contingency(_row(0, 1 << 16), _row(0, 1), 3)


def test_no_matching_counts_unknown_ids_as_false_negatives():
    gt = _row(0, 0, 1, 1)
    pred = _row(0, 5, 1, 1)  # id 5 is no class
    s = score([contingency(pred, gt, 2)], 2, "none")
    assert s.tp.tolist() == [1, 2] and s.fp.tolist() == [0, 0] and s.fn.tolist() == [1, 0]


def test_dataset_matching_with_more_clusters_than_classes():
    gts = [_row(0, 0, 1, 1), _row(0, 0, 1, 1)]
    preds = [_row(0, 0, 1, 2), _row(0, 0, 1, 1)]
    s = score([contingency(p, g, 2) for p, g in zip(preds, gts, strict=True)], 2, "hungarian-dataset")
    assert s.tp.tolist() == [4, 3] and s.fp.tolist() == [0, 0] and s.fn.tolist() == [0, 1]
