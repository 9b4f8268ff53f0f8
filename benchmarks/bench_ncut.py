"""Recursive normalized cut: diffuseg against the published DiffCut recursion, same affinities.

Three solvers cut the same affinity matrices (DiffCut's: cosine similarity of the features,
min-max normalised, to the power alpha = 10):

* **published**: DiffCut's recursion as its code runs it (PaulCouairon/DiffCut@aa16df4,
  `diffcut/recursive_normalized_cut.py`), re-written here for the CPU: painting of explored
  tokens, rows with an exact 0 dropped, dense D and D^-1/2 matrices, a full
  ``torch.linalg.eigh``, one quadratic form and one ``.item()`` per threshold.
* **dense**: ``diffuseg.ops.ncut`` with ``eigensolver="dense"`` (what diffuseg ran before
  the Lanczos solver: LAPACK's two smallest eigenpairs).
* **auto**: ``diffuseg.ops.ncut`` as it runs now (matrix-free Lanczos above
  `LANCZOS_MIN_NODES` nodes).

Printed: per case the seconds of each (median of --repeats warm runs, one thread), the
speedup of auto over published, and whether auto's labels equal dense's (adjusted Rand index
1.0) and are bit-identical when run again. The acceptance case set is N = 1024 (32x32 grids,
8 cases); N = 2304 and 4096 are timed too; --noisy adds 60 noisier cases (noise x1-x3,
tau 0.5 and 0.2) checked for labels only.

The published recursion drops tokens (exact-zero rows) and so cuts slightly different graphs
below the root; its labels are not compared, only its time.

Run:  python benchmarks/bench_ncut.py [--threads 1] [--repeats 3] [--sides 32,48,64] [--noisy]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median


def _threads_from_argv() -> None:
    """Set every BLAS/OpenMP pool to --threads (default 1) before numpy and torch load."""
    n = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n


_threads_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffuseg.ops.kway_ncut import kway_ncut_affinity  # noqa: E402
from diffuseg.ops.ncut import affinity_matrix, recursive_ncut_affinity  # noqa: E402


# ------------------------------------------------------------------------ the published code
def _published_bipartition(a: torch.Tensor, num_thresholds: int = 100):
    """One cut as DiffCut computes it: dense matrices, full eigh, a loop over thresholds."""
    d = torch.diag(a.sum(dim=1))
    d_inv_sqrt = torch.diag(1 / torch.diag(d) ** 0.5)
    try:
        _, vectors = torch.linalg.eigh(d_inv_sqrt @ (d - a) @ d_inv_sqrt)
    except RuntimeError:
        return None  # the published code crashes a line later; end the branch instead
    y = d_inv_sqrt @ vectors[:, 1]
    y = y * torch.sign(y[torch.argmax(y.abs())])
    lap, diag, total = d - a, torch.diag(d), torch.sum(d)
    values, sides = [], []
    for thr in torch.linspace(float(y.min()) * 0.99, float(y.max()) * 0.99, num_thresholds):
        side = (y > thr).float()
        x = 2 * side - 1
        k = torch.sum(diag * (x > 0)) / total
        z = (1 + x) - k / (1 - k) * (1 - x)
        values.append(((z @ lap @ z) / (z @ d @ z)).item())
        sides.append(side)
    best = int(np.argmin(values))
    return sides[best], values[best]


def published_recursive_ncut(affinity: torch.Tensor, tau: float) -> torch.Tensor:
    """DiffCut's `recursive_ncut` + `assemble_clusters` on a given affinity; labels (N,)."""
    n = affinity.shape[0]
    masks: list[torch.Tensor] = []
    # (masked affinity, painting, mask, level); explicit stack in the published call order
    stack = [(affinity, torch.zeros(n), torch.zeros(n), 0)]
    while stack:
        aff, painting, mask, level = stack.pop()
        painting = ((painting + mask) > 0).float()
        aff = aff * (1 - painting[:, None] * painting[None, :])
        if level == 0:
            keep = torch.arange(n)
        else:
            keep = torch.tensor(sorted(set(range(n)) - set(torch.where(aff == 0)[0].tolist())), dtype=torch.long)
        if keep.numel() <= 1:
            continue
        cut = _published_bipartition(aff[:, keep][keep, :])
        if cut is None or not cut[1] < tau:
            continue
        side = torch.zeros(n)
        side[keep] = cut[0]
        masks.append(side)
        stack.append((aff, painting, side, level + 1))  # second call: paints the positive side
        stack.append((aff, painting, 1 - side, level + 1))  # first call: keeps the positive side
    code, top = torch.zeros(n), 1.0
    for m in masks:
        code += top * m
        top = float(code.max()) + 1
    return torch.unique(code, return_inverse=True)[1]


# ------------------------------------------------------------------------------- cases
def clustered_features(side: int, k: int, noise: float, seed: int, channels: int = 128) -> torch.Tensor:
    """(C, side, side): k smooth random regions, each a random centre plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, k, 4, 4, generator=g), size=(side, side), mode="bilinear")
    centres = torch.randn(k, channels, generator=g)
    return centres[field[0].argmax(0)].permute(2, 0, 1) + noise * torch.randn(channels, side, side, generator=g)


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hubert-Arabie ARI of two labelings (N,): 1.0 iff the partitions are equal."""
    _, ia = torch.unique(a, return_inverse=True)
    _, ib = torch.unique(b, return_inverse=True)
    table = torch.zeros(int(ia.max()) + 1, int(ib.max()) + 1, dtype=torch.float64)
    table.index_put_((ia, ib), torch.ones_like(ia, dtype=torch.float64), accumulate=True)

    def pairs(x: torch.Tensor) -> float:
        return float((x * (x - 1) / 2).sum())

    n = float(a.numel())
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` warm calls (one warm-up call first) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return median(times), out


def run_case(affinity: torch.Tensor, tau: float, repeats: int, with_published: bool, kway: bool = False) -> dict:
    t_auto, auto = timed(lambda: recursive_ncut_affinity(affinity, tau), repeats)
    t_dense, dense = timed(lambda: recursive_ncut_affinity(affinity, tau, eigensolver="dense"), repeats)
    again = recursive_ncut_affinity(affinity, tau)
    row = {
        "auto": t_auto,
        "dense": t_dense,
        "segments": int(auto.max()) + 1,
        "ari": adjusted_rand_index(auto, dense),
        "repeat": bool(torch.equal(auto, again)),
    }
    if with_published:
        row["published"], _ = timed(lambda: published_recursive_ncut(affinity, tau), max(1, repeats // 2))
    if kway:
        row["kway"], labels = timed(lambda: kway_ncut_affinity(affinity), repeats)
        row["kway_segments"] = int(labels.max()) + 1
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default="32,48,64", help="grid sides (32 = the 8 acceptance cases)")
    parser.add_argument("--noisy", action="store_true", help="also 60 noisier 32x32 cases, labels only")
    parser.add_argument(
        "--kway", action="store_true", help="also time the K-way solver (eigengap K) on the same affinities"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), alpha 10, C = 128, tau 0.5")
    for side in (int(s) for s in args.sides.split(",")):
        cases = range(8) if side == 32 else range(2)
        speedups, dense_speedups, kway_speedups = [], [], []
        for case in cases:
            feats = clustered_features(side, k=3 + case % 6, noise=0.5, seed=case)
            affinity = affinity_matrix(feats.reshape(feats.shape[0], -1), 10.0)
            row = run_case(affinity, 0.5, args.repeats if side == 32 else 1, with_published=True, kway=args.kway)
            speedups.append(row["published"] / row["auto"])
            if args.kway:
                kway_speedups.append(row["published"] / row["kway"])
            dense_speedups.append(row["published"] / row["dense"])
            print(
                f"N={side * side:5d} case {case}: published {row['published']:7.3f} s  dense {row['dense']:7.3f} s  "
                f"auto {row['auto']:7.3f} s  speedup {speedups[-1]:6.1f}x (dense {dense_speedups[-1]:4.1f}x)  "
                f"segments {row['segments']:3d}  ARI(auto, dense) {row['ari']:.3f}  repeat identical {row['repeat']}"
                + (f"  kway {row['kway']:7.3f} s ({row['kway_segments']} segments)" if args.kway else "")
            )
        print(
            f"N={side * side:5d}: median speedup over published {median(speedups):.1f}x "
            f"(dense solver {median(dense_speedups):.1f}x){'   target >= 10x' if side == 32 else ''}"
            + (f"; K-way solver {median(kway_speedups):.1f}x" if args.kway else "")
        )
    if args.noisy:
        bad = 0
        for i in range(60):
            noise, tau = (1.0, 2.0, 3.0)[i % 3] * 0.5, (0.5, 0.2)[(i // 3) % 2]
            feats = clustered_features(32, k=3 + i % 6, noise=noise, seed=100 + i)
            affinity = affinity_matrix(feats.reshape(feats.shape[0], -1), 10.0)
            row = run_case(affinity, tau, 1, with_published=False)
            bad += row["ari"] != 1.0 or not row["repeat"]
        print(f"noisy cases: {60 - bad}/60 with ARI(auto, dense) 1.0 and bit-identical repeats")


if __name__ == "__main__":
    main()
