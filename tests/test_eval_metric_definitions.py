"""aAcc, mIoU, mAcc, fwIoU, per-class IoU and accuracy: mmseg's and detectron2's definitions.

Checked three ways: a hand-computed 4x4 example with every edge case, torchmetrics on random
label maps (its conventions for undefined classes stated where they differ), and a plain
transcription of mmseg's ``intersect_and_union`` (histograms of intersect / pred / label over
the non-ignored pixels) that also takes the ids torchmetrics refuses (-1, ids >= C).
"""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.eval.metrics import MATCHINGS, MetricAccumulator, Scores, class_metrics, contingency, score

IGNORE = 255

# The 4x4 known answer. C = 5 classes; gt has classes 0, 1, 2 and four ignored pixels; class 3
# is absent from gt but predicted twice; class 4 is predicted only on ignored pixels (never counts);
# one valid pixel is not predicted (-1).
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 0, 1],
        [2, 2, IGNORE, IGNORE],
        [2, 2, IGNORE, IGNORE],
    ]
)
PRED = np.array(
    [
        [0, 0, 1, 3],
        [0, 1, 1, 1],
        [2, 3, 4, 4],
        [-1, 2, 4, 4],
    ]
)
# By hand, 12 valid pixels:
#   class 0 (5 px): predicted 0, 0, 0, 1, 1      -> TP 3, FN 2
#   class 1 (3 px): predicted 1, 3, 1            -> TP 2, FN 1
#   class 2 (4 px): predicted 2, 3, -1, 2        -> TP 2, FN 2 (one wrong, one not predicted)
#   false positives: class 1 twice (on class 0), class 3 twice (on classes 1 and 2)
#   TP = [3, 2, 2, 0, 0], FP = [0, 2, 0, 2, 0], FN = [2, 1, 2, 0, 0]
#   IoU = TP / (TP + FP + FN) = [3/5, 2/5, 2/4, 0/2, 0/0] = [0.6, 0.4, 0.5, 0, NaN]
#   mIoU (nanmean) = (0.6 + 0.4 + 0.5 + 0) / 4 = 0.375
#     (detectron2 skips class 3, no gt: (0.6 + 0.4 + 0.5) / 3 = 0.5)
#   Acc = TP / (TP + FN) = [3/5, 2/3, 2/4, 0/0, 0/0] -> mAcc = (0.6 + 2/3 + 0.5) / 3 = 53/90
#     (torchmetrics' macro accuracy counts class 3 as 0: (0.6 + 2/3 + 0.5 + 0) / 4 = 53/120)
#   aAcc = (3 + 2 + 2) / 12 = 7/12
#   fwIoU = (5 * 0.6 + 3 * 0.4 + 4 * 0.5) / 12 = 6.2 / 12 = 31/60
HAND = {
    "tp": [3, 2, 2, 0, 0],
    "fp": [0, 2, 0, 2, 0],
    "fn": [2, 1, 2, 0, 0],
    "iou": [0.6, 0.4, 0.5, 0.0, np.nan],
    "acc": [0.6, 2 / 3, 0.5, np.nan, np.nan],
    "miou": 0.375,
    "macc": 53 / 90,
    "aacc": 7 / 12,
    "fwiou": 31 / 60,
}


def test_hand_computed_4x4_example():
    s = score([contingency(PRED, GT, 5, IGNORE)], 5, "none")
    assert s.tp.tolist() == HAND["tp"] and s.fp.tolist() == HAND["fp"] and s.fn.tolist() == HAND["fn"]
    np.testing.assert_allclose(s.iou, HAND["iou"], equal_nan=True)
    np.testing.assert_allclose(s.acc, HAND["acc"], equal_nan=True)
    for name in ("miou", "macc", "aacc", "fwiou"):
        assert getattr(s, name) == pytest.approx(HAND[name]), name
    assert s.pixel_accuracy == s.aacc and s.num_pixels == 12
    d = s.to_dict(["a", "b", "c", "d", "e"])
    assert d["aacc"] == d["pixel_accuracy"] == pytest.approx(7 / 12)
    assert d["macc"] == pytest.approx(53 / 90) and d["fwiou"] == pytest.approx(31 / 60)
    assert d["iou"][3] == 0.0 and d["iou"][4] is None  # predicted-but-absent vs never seen
    assert d["acc"][3] is None and d["acc_by_class"]["b"] == pytest.approx(2 / 3)
    assert d["iou_by_class"]["e"] is None


def test_hand_computed_per_image_hungarian():
    # gt 0 0 0 1 1 1 / pred 5 5 7 9 9 9: 0<->5, 1<->9; segment 7 is unmatched -> FN of class 0
    s = score([contingency(np.array([[5, 5, 7, 9, 9, 9]]), np.array([[0, 0, 0, 1, 1, 1]]), 2)], 2)
    assert s.tp.tolist() == [2, 3] and s.fp.tolist() == [0, 0] and s.fn.tolist() == [1, 0]
    assert s.acc.tolist() == pytest.approx([2 / 3, 1.0])
    assert s.macc == pytest.approx(5 / 6) and s.aacc == pytest.approx(5 / 6)
    assert s.fwiou == pytest.approx((3 * 2 / 3 + 3 * 1.0) / 6)


def test_empty_counts_give_nan_everywhere_not_warnings():
    m = class_metrics(np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3, np.int64))
    assert all(np.isnan(m[k]) for k in ("miou", "macc", "fwiou", "aacc"))
    d = MetricAccumulator(3, "none").result().to_dict()
    assert d["miou"] is None and d["macc"] is None and d["aacc"] is None and d["acc"] == [None] * 3


def _random_pairs(rng: np.random.Generator, c: int, n: int, *, out_of_range: bool = False, predict_absent: bool = True):
    """`n` (pred, gt) pairs of random 12 x 16 label maps with ignored pixels; two classes are
    never in gt (and predicted, with `predict_absent`), which ones varies with `rng`."""
    gt_classes = rng.choice(c, size=max(1, c - 2), replace=False)
    pred_classes = rng.choice(c, size=max(1, c - 1), replace=False) if predict_absent else gt_classes
    pairs = []
    for _ in range(n):
        gt = rng.choice(gt_classes, (12, 16))
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.choice(pred_classes, gt.shape))
        gt[rng.random(gt.shape) < 0.1] = IGNORE
        if out_of_range:  # not predicted, and ids no class column holds
            pred[rng.random(gt.shape) < 0.05] = -1
            pred[rng.random(gt.shape) < 0.05] = c + 3
        pairs.append((pred, gt))
    return pairs


def _accumulate(pairs, c: int, matching: str = "none", background_class: int | None = None) -> Scores:
    acc = MetricAccumulator(c, matching, background_class)
    for pred, gt in pairs:
        acc.add(contingency(pred, gt, c, IGNORE))
    return acc.result()


@pytest.mark.parametrize("predict_absent", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_against_torchmetrics(seed, predict_absent):
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchmetrics.classification", reason="torchmetrics is in the [test] extra")
    rng = np.random.default_rng(seed)
    c = int(rng.integers(3, 9))
    pairs = _random_pairs(rng, c, int(rng.integers(1, 5)), predict_absent=predict_absent)
    ours = _accumulate(pairs, c)
    preds = torch.from_numpy(np.concatenate([p.ravel() for p, _ in pairs]))
    target = torch.from_numpy(np.concatenate([g.ravel() for _, g in pairs]))

    def tm(cls, average):
        return cls(num_classes=c, average=average, ignore_index=IGNORE)(preds, target).double().numpy()

    iou = tm(tmc.MulticlassJaccardIndex, None)
    union = ours.tp + ours.fp + ours.fn
    # torchmetrics gives 0 (zero_division) where the union is empty; ours is NaN there
    assert np.array_equal(np.isnan(ours.iou), union == 0)
    np.testing.assert_allclose(ours.iou[union > 0], iou[union > 0], rtol=1e-6)
    # its macro average skips empty unions as nanmean does; classes only predicted count as 0 in both
    assert ours.miou == pytest.approx(float(tm(tmc.MulticlassJaccardIndex, "macro")), rel=1e-6)
    # 'weighted' weighs by support (tp + fn): exactly fwIoU
    assert ours.fwiou == pytest.approx(float(tm(tmc.MulticlassJaccardIndex, "weighted")), rel=1e-6)
    assert ours.aacc == pytest.approx(float(tm(tmc.MulticlassAccuracy, "micro")), rel=1e-6)

    acc = tm(tmc.MulticlassAccuracy, None)
    support = ours.tp + ours.fn
    assert np.array_equal(np.isnan(ours.acc), support == 0)
    np.testing.assert_allclose(ours.acc[support > 0], acc[support > 0], rtol=1e-6)
    # torchmetrics' macro accuracy counts a class that is predicted but absent from gt as 0
    # (weight 1, 0/0 -> 0); mmseg and detectron2 leave it out. Same sum, different count:
    fp_only = int(np.sum((support == 0) & (ours.fp > 0)))
    tm_macc = float(tm(tmc.MulticlassAccuracy, "macro"))
    assert tm_macc == pytest.approx(np.nansum(ours.acc) / (np.sum(support > 0) + fp_only), rel=1e-6)
    assert (fp_only > 0) == predict_absent
    if not predict_absent:
        assert ours.macc == pytest.approx(tm_macc, rel=1e-6)


def _mmseg_areas(pred: np.ndarray, gt: np.ndarray, c: int) -> tuple[np.ndarray, ...]:
    """mmseg ``intersect_and_union`` in numpy: histograms over [0, C) of the non-ignored pixels'
    intersect, prediction and label (values outside [0, C) fall out of the histogram)."""
    keep = gt != IGNORE
    p, g = pred[keep], gt[keep]

    def hist(v):
        v = v[(v >= 0) & (v < c)]
        return np.bincount(v, minlength=c).astype(np.float64)

    inter, area_pred, area_label = hist(p[p == g]), hist(p), hist(g)
    return inter, area_pred + area_label - inter, area_label


@pytest.mark.parametrize("seed", range(6))
def test_against_mmseg_definitions_with_unpredicted_and_foreign_ids(seed):
    rng = np.random.default_rng(100 + seed)
    c = int(rng.integers(3, 8))
    pairs = _random_pairs(rng, c, 3, out_of_range=True)
    inter, union, label = (sum(a) for a in zip(*(_mmseg_areas(p, g, c) for p, g in pairs), strict=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label
    ours = _accumulate(pairs, c)
    np.testing.assert_allclose(ours.iou, iou, equal_nan=True)
    np.testing.assert_allclose(ours.acc, acc, equal_nan=True)
    assert ours.aacc == pytest.approx(inter.sum() / label.sum())
    assert ours.miou == pytest.approx(np.nanmean(iou)) and ours.macc == pytest.approx(np.nanmean(acc))
    assert ours.fwiou == pytest.approx(np.sum(np.nan_to_num(iou) * label / label.sum()))


@pytest.mark.parametrize("matching", MATCHINGS)
def test_every_matching_reports_consistent_metrics(matching):
    rng = np.random.default_rng(7)
    pairs = _random_pairs(rng, 5, 4, out_of_range=True)
    s = _accumulate(pairs, 5, matching, background_class=0)
    # every valid pixel is the TP or the FN of its true class, so aAcc = pixel accuracy
    assert int((s.tp + s.fn).sum()) == s.num_pixels
    assert s.aacc == s.pixel_accuracy == pytest.approx(s.tp.sum() / s.num_pixels)
    m = class_metrics(s.tp, s.fp, s.fn)
    np.testing.assert_array_equal(s.acc, m["acc"])
    assert (s.miou, s.macc, s.fwiou) == (m["miou"], m["macc"], m["fwiou"])
    assert 0.0 < s.fwiou <= 1.0 and 0.0 < s.macc <= 1.0
