"""Benchmark: metric accumulation on 500 synthetic 512x512 prediction / label pairs (CPU).

Measures `contingency` (one bincount per image) plus per-image Hungarian accumulation, and,
in the same run, two baselines on a subset of the same pairs:

* a per-class loop (``for c in classes: for k in ids: ((gt == c) & (pred == k)).sum()``), the
  naive way to build the histogram;
* the masked-index bincount of the reference code (``bincount(n * gt[mask] + pred[mask])``).

Target: under 5 ms per image for the vectorised path.

Usage:
    python benchmarks/bench_metrics.py [--images 500] [--size 512] [--classes 27] [--segments 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffuseg.eval.metrics import MetricAccumulator, contingency


def _pairs(n: int, size: int, classes: int, segments: int, seed: int = 0):
    """Blocky labels (so images look like segmentations) with 5 % ignore pixels."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        cells = size // 32
        gt = rng.integers(0, classes, (cells, cells)).repeat(32, 0).repeat(32, 1).astype(np.uint8)
        gt[rng.random((size, size)) < 0.05] = 255
        pred = rng.integers(0, segments, (cells, cells)).repeat(32, 0).repeat(32, 1).astype(np.int64)
        yield pred, gt


def _loop_hist(pred: np.ndarray, gt: np.ndarray, classes: int) -> np.ndarray:
    k = int(pred.max()) + 1
    hist = np.zeros((classes, k), np.int64)
    for c in range(classes):
        gc = gt == c
        for j in range(k):
            hist[c, j] = int((gc & (pred == j)).sum())
    return hist


def _masked_bincount(pred: np.ndarray, gt: np.ndarray, classes: int) -> np.ndarray:
    k = max(classes, int(pred.max()) + 1)
    mask = gt < classes
    return np.bincount(k * gt[mask].astype(np.int64) + pred[mask], minlength=classes * k).reshape(classes, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=27)
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument(
        "--baseline-images",
        type=int,
        default=10,
        help="pairs timed with the slow per-class loop (default 10)",
    )
    args = parser.parse_args()

    pairs = list(_pairs(args.images, args.size, args.classes, args.segments))
    acc = MetricAccumulator(args.classes, "hungarian-per-image")
    t0 = time.perf_counter()
    for pred, gt in pairs:
        acc.add(contingency(pred, gt, args.classes))
    ours = (time.perf_counter() - t0) / len(pairs)
    result = acc.result()

    sub = pairs[: args.baseline_images]
    t0 = time.perf_counter()
    for pred, gt in sub:
        _loop_hist(pred, gt, args.classes)
    loop = (time.perf_counter() - t0) / len(sub)
    t0 = time.perf_counter()
    for pred, gt in sub * 5:
        _masked_bincount(pred, gt, args.classes)
    masked = (time.perf_counter() - t0) / (5 * len(sub))

    pred, gt = pairs[0]  # same numbers from all three
    h = contingency(pred, gt, args.classes).hist
    assert np.array_equal(h, _loop_hist(pred, gt, args.classes)[:, : h.shape[1]])

    print(
        f"pairs: {len(pairs)} x {args.size}x{args.size}, {args.classes} classes, "
        f"{args.segments} predicted ids, 5% ignore"
    )
    print(
        f"diffuseg contingency + per-image Hungarian: {1000 * ours:8.3f} ms / image "
        f"(target < 5 ms: {'PASS' if ours < 0.005 else 'FAIL'})"
    )
    print(
        f"baseline per-class loop histogram:         {1000 * loop:8.3f} ms / image "
        f"({len(sub)} pairs)  ratio {loop / ours:6.1f}x"
    )
    print(
        f"baseline masked-index bincount (histogram only): {1000 * masked:8.3f} ms / image  ratio {masked / ours:6.2f}x"
    )
    print(f"mIoU of the random pairs (sanity): {100 * result.miou:.2f}")


if __name__ == "__main__":
    main()
