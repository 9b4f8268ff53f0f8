"""Torch k-means and a ground-truth-free rule for choosing K (MaskDiffusion, unsupervised variant).

* `kmeans`: greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + ln K candidates per
  centre, as scikit-learn) drawn from a `torch.Generator`, then Lloyd iterations. Every one of
  the K clusters is non-empty: a cluster that empties is re-seeded, deterministically, at the
  point farthest from its centre. K larger than the number of distinct points is an error,
  since K non-empty clusters cannot exist then.
* `silhouette`: the mean silhouette coefficient (Rousseeuw 1987) with Euclidean distances on
  the given features (callers L2-normalise first when they mean cosine geometry), on at most
  `sample` points. Singleton clusters score 0 (scikit-learn's convention).
* `choose_k`: the rule for K. Run `kmeans` for every K in [k_min, min(k_max, N - 1)] and keep
  the K whose clustering has the highest mean silhouette; ties go to the smaller K. It looks
  only at the features, never at any ground truth. All K are scored on the same point sample.

Distances are computed in float32 whatever the input dtype (inputs are cast chunk by chunk),
on x's device; (N, K) and (M, M) distance blocks are computed in row chunks of bounded size.

Cost, for N points of dimension D: `kmeans` O((2 + ln K) K N D) for seeding plus
O(iterations K N D) for Lloyd (matrix products); `silhouette` O(M^2 D) with
M = min(N, sample); `choose_k` the sum of both over the K range.
"""

from __future__ import annotations

import logging
import math

import torch

__all__ = ["kmeans", "silhouette", "choose_k"]

logger = logging.getLogger(__name__)

# Elements per temporary block (rows x columns) in the chunked distance computations: 16 MiB
# of float32.
_BLOCK = 1 << 22


class _TooFewDistinctPoints(ValueError):
    """k exceeds the number of distinct points; `distinct` says how many there are."""

    def __init__(self, message: str, distinct: int):
        super().__init__(message)
        self.distinct = distinct


def _rows_per_chunk(n: int, width: int) -> int:
    return max(1, min(n, _BLOCK // max(width, 1)))


def _chunks(x: torch.Tensor, width: int):
    """Yield (start, float32 rows) over x in chunks of about _BLOCK / width rows."""
    step = _rows_per_chunk(len(x), max(width, x.shape[1]))
    for s in range(0, len(x), step):
        yield s, x[s : s + step].float()


def _check_points(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"`x` must be a 2-D (N, D) tensor, got shape {shape}.")
    if not x.is_floating_point():
        raise ValueError(f"`x` must have a floating-point dtype, got {x.dtype}.")
    if x.shape[1] < 1:
        raise ValueError(f"`x` must have at least one feature (D >= 1), got shape {tuple(x.shape)}.")
    for _, rows in _chunks(x, 1):
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("`x` must be finite (in float32), got NaN or inf values.")


def _generator_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _sq_dist_to_point(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact squared distances (N,) float32 from every row of x to the point c (D,) float32.

    Direct differences, not the matrix-product expansion, so a point identical to c gets
    exactly 0 (used to detect duplicates while seeding).
    """
    out = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for s, rows in _chunks(x, 1):
        out[s : s + len(rows)] = ((rows - c) ** 2).sum(1)
    return out


def _row_sq(x: torch.Tensor) -> torch.Tensor:
    """Squared norms (N,) float32 of the rows of x."""
    out = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for s, rows in _chunks(x, 1):
        out[s : s + len(rows)] = (rows * rows).sum(1)
    return out


def _assign(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre per point: labels (N,) int64 and squared distances (N,) float32.

    `x_sq` is `_row_sq(x)`; distances use the expansion |x|^2 - 2 x.c + |c|^2.
    """
    k = len(centres)
    c_sq = (centres * centres).sum(1)
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    dist = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for s, rows in _chunks(x, k):
        best, idx = (c_sq - 2 * rows @ centres.T).min(1)
        labels[s : s + len(rows)] = idx
        dist[s : s + len(rows)] = best
    return labels, (dist + x_sq).clamp_min(0)


def _means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster means (k, D) float32 and counts (k,) int64; one-hot products (deterministic)."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    ids = torch.arange(k, device=x.device)
    for s, rows in _chunks(x, k):
        onehot = (labels[s : s + len(rows), None] == ids).float()
        sums += (onehot.T @ rows).double()
    counts = torch.bincount(labels, minlength=k)
    return (sums / counts.clamp_min(1)[:, None]).float(), counts


def _fill_empty(labels: torch.Tensor, dist: torch.Tensor, k: int) -> torch.Tensor:
    """Give every empty cluster one point: the point farthest from its centre.

    Clusters are filled in increasing index order; each takes, among points whose cluster has
    more than one member, the one with the largest `dist` (first index on ties), so no other
    cluster empties. Requires len(labels) >= k. Returns the new labels (a copy if changed).
    """
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return labels
    labels, dist = labels.clone(), dist.clone()
    for j in empty:
        donors = counts[labels] > 1
        p = int(torch.where(donors, dist, torch.full_like(dist, -math.inf)).argmax())
        counts[labels[p]] -= 1
        counts[j] = 1
        labels[p] = j
        dist[p] = 0.0
    return labels


def _seed(x: torch.Tensor, x_sq: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy k-means++ seeding: (k, D) float32 centres, k distinct rows of x.

    Raises:
        _TooFewDistinctPoints: if x has fewer than k distinct rows (in float32).
    """
    n = len(x)
    gdev = _generator_device(generator, x.device)
    first = int(torch.randint(n, (1,), generator=generator, device=gdev))
    centres = [x[first].float()]
    closest = _sq_dist_to_point(x, centres[0])  # exact: 0 exactly at duplicates of a centre
    trials = 2 + int(math.log(k))
    for found in range(1, k):
        cum = closest.double().cumsum(0)
        total = cum[-1]
        if not bool(total > 0):
            raise _TooFewDistinctPoints(
                f"`k` must be at most the number of distinct points in `x` ({found}) so that every "
                f"cluster is non-empty, got k={k}.",
                distinct=found,
            )
        u = torch.rand(trials, generator=generator, device=gdev, dtype=torch.float64).to(x.device)
        cand = torch.searchsorted(cum, u * total, right=True)
        # u * total can round up to total (u < 1): stay on a point of positive weight.
        cand = cand.clamp_max(int((closest > 0).nonzero().max()))
        cand_x = x[cand].float()  # (trials, D); exact distance to every centre > 0
        cand_sq = (cand_x * cand_x).sum(1)
        potential = torch.zeros(trials, dtype=torch.float64, device=x.device)
        for s, rows in _chunks(x, trials):
            d = (x_sq[s : s + len(rows), None] - 2 * rows @ cand_x.T + cand_sq).clamp_min(0)
            potential += torch.minimum(d, closest[s : s + len(rows), None]).sum(0, dtype=torch.float64)
        best = cand_x[int(potential.argmin())]
        centres.append(best)
        closest = torch.minimum(closest, _sq_dist_to_point(x, best))
    return torch.stack(centres)


def _lloyd(
    x: torch.Tensor, centres: torch.Tensor, iterations: int, tol: float, x_sq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations from `centres` (k, D) float32; see `kmeans` for the stopping rule."""
    k = len(centres)
    x_sq = _row_sq(x) if x_sq is None else x_sq
    threshold = tol * _mean_variance(x)
    labels = None
    for _ in range(iterations):
        new_labels, dist = _assign(x, x_sq, centres)
        new_labels = _fill_empty(new_labels, dist, k)
        if labels is not None and torch.equal(new_labels, labels):
            break  # centres are already the means of these labels
        labels = new_labels
        new_centres, _ = _means(x, labels, k)
        shift = float(((new_centres - centres) ** 2).sum())
        centres = new_centres
        if shift <= threshold:
            break
    return labels, centres


def _mean_variance(x: torch.Tensor) -> float:
    """Mean over features of the per-feature variance of x (float64 accumulation)."""
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for _, rows in _chunks(x, 1):
        mean += rows.sum(0, dtype=torch.float64)
    mean /= len(x)
    sq = torch.zeros((), dtype=torch.float64, device=x.device)
    for _, rows in _chunks(x, 1):
        sq += ((rows.double() - mean) ** 2).sum()
    return float(sq) / (len(x) * x.shape[1])


def kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    iterations: int = 50,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means clustering of the rows of x: greedy k-means++ seeding, then Lloyd iterations.

    Seeding draws from `generator` (any device: draws are made on the generator's device and
    moved to x's; None uses torch's default generator). Lloyd iterations stop when the labels
    no longer change, when the squared centre shift summed over centres is at most
    `tol` x (mean per-feature variance of x) (scikit-learn's relative tolerance), or after
    `iterations`. A cluster that empties is re-seeded at the point farthest from its centre
    (taken from a cluster of two or more points; deterministic). Deterministic for a seeded
    generator on a given device.

    Args:
        x: (N, D) floating-point tensor, any float dtype, any device; finite.
        k: number of clusters, 1 <= k <= number of distinct rows of x.
        generator: torch.Generator for the seeding, or None.
        iterations: Lloyd iterations at most, >= 1.
        tol: relative centre-shift tolerance, >= 0.

    Returns:
        labels: (N,) int64 in [0, k); every cluster is non-empty.
        centres: (k, D) float32 on x's device; centres[j] is the mean of the points labelled j.

    Raises:
        ValueError: if x is not 2-D floating point or not finite, k < 1, k > N, k exceeds the
            number of distinct rows of x, iterations < 1 or tol < 0.
    """
    _check_points(x)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, N] with N={n} points in `x`, got k={k}.")
    if iterations < 1:
        raise ValueError(f"`iterations` must be >= 1, got {iterations}.")
    if not tol >= 0:
        raise ValueError(f"`tol` must be >= 0, got {tol}.")
    x_sq = _row_sq(x)
    centres = _seed(x, x_sq, k, generator)
    return _lloyd(x, centres, iterations, tol, x_sq)


def _silhouette_values(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Silhouette coefficient per point, (M,) float64; labels must hold >= 2 distinct values."""
    _, codes = torch.unique(labels, return_inverse=True)
    n_labels = int(codes.max()) + 1
    m = len(x)
    # Centre the features: the distance expansion then loses less to cancellation.
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for _, rows in _chunks(x, 1):
        mean += rows.sum(0, dtype=torch.float64)
    mean = (mean / m).float()
    xc = torch.cat([rows - mean for _, rows in _chunks(x, 1)])  # (M, D) float32
    sq = (xc * xc).sum(1)
    onehot = torch.zeros(m, n_labels, dtype=torch.float64, device=x.device)
    onehot[torch.arange(m, device=x.device), codes] = 1.0
    counts = onehot.sum(0)  # (L,)
    out = torch.empty(m, dtype=torch.float64, device=x.device)
    step = _rows_per_chunk(m, max(m, xc.shape[1]))
    for s in range(0, m, step):
        rows = xc[s : s + step]
        r = len(rows)
        d2 = sq[s : s + r, None] + sq[None] - 2 * rows @ xc.T
        d = d2.clamp_min(0).sqrt()
        d[torch.arange(r, device=x.device), torch.arange(s, s + r, device=x.device)] = 0.0
        sums = d.double() @ onehot  # (r, L) distance sums per cluster
        own = codes[s : s + r]
        own_count = counts[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_count - 1).clamp_min(1)
        mean_other = sums / counts
        mean_other.scatter_(1, own[:, None], math.inf)
        b = mean_other.min(1).values
        denom = torch.maximum(a, b)
        value = torch.where(denom > 0, (b - a) / torch.where(denom > 0, denom, 1.0), 0.0)
        out[s : s + r] = torch.where(own_count > 1, value, 0.0)
    return out


def _check_labels(x: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(x),):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a 1-D tensor of length N={len(x)}, got shape {shape}.")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"`labels` must have an integer dtype, got {labels.dtype}.")


def _check_sample(sample: int | None) -> None:
    if sample is not None and sample < 2:
        raise ValueError(f"`sample` must be None or >= 2, got {sample}.")


def _sample_indices(n: int, sample: int | None, generator: torch.Generator | None, device) -> torch.Tensor | None:
    """`sample` distinct indices in [0, n) drawn from `generator`, or None for all points."""
    if sample is None or n <= sample:
        return None
    gdev = _generator_device(generator, device)
    return torch.randperm(n, generator=generator, device=gdev)[:sample].to(device)


def silhouette(
    x: torch.Tensor,
    labels: torch.Tensor,
    sample: int | None = 2000,
    generator: torch.Generator | None = None,
) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) of a clustering, Euclidean distances.

    For point i in cluster C: a = mean distance to the other points of C, b = the smallest
    mean distance to the points of another cluster, s = (b - a) / max(a, b); s = 0 when C has
    one point (or a = b = 0). When N > `sample`, the score is that of the `sample` points drawn
    without replacement from `generator`, scored among themselves (as scikit-learn's
    `silhouette_score(..., sample_size=sample)`); otherwise all points are used.

    Args:
        x: (N, D) floating-point tensor, any float dtype and device; distances in float32.
        labels: (N,) integer tensor of cluster ids (any values) on x's device.
        sample: points to score at most (>= 2), or None for all.
        generator: torch.Generator for the sample, or None.

    Returns:
        The mean silhouette in [-1, 1], a Python float.

    Raises:
        ValueError: if x is not 2-D floating point or not finite, labels do not have shape (N,),
            sample < 2, or the (sampled) labels hold fewer than 2 clusters.
    """
    _check_points(x)
    _check_labels(x, labels)
    _check_sample(sample)
    idx = _sample_indices(len(x), sample, generator, x.device)
    if idx is not None:
        x, labels = x[idx], labels[idx]
    n_labels = len(torch.unique(labels))
    if n_labels < 2:
        where = f"the {len(labels)} sampled points" if idx is not None else "`labels`"
        raise ValueError(f"the silhouette needs at least 2 clusters, got {n_labels} in {where}.")
    return float(_silhouette_values(x, labels).mean())


def choose_k(
    x: torch.Tensor,
    k_min: int = 2,
    k_max: int = 8,
    generator: torch.Generator | None = None,
    sample: int | None = 2000,
) -> tuple[int, dict[int, float]]:
    """Choose the number of clusters without ground truth: the K of highest mean silhouette.

    Runs `kmeans(x, K, generator)` for K = k_min, ..., min(k_max, N - 1) in increasing order
    and scores each clustering with the mean silhouette (Euclidean) on one sample of at most
    `sample` points, drawn once from `generator` before any clustering, so every K is scored on
    the same points. The highest score wins; ties go to the smaller K. A K whose clustering
    leaves fewer than 2 clusters among the sampled points gets NaN and cannot win. K beyond the
    number of distinct points of x is not tried (the range ends there).

    Args:
        x: (N, D) floating-point tensor, any float dtype and device.
        k_min: smallest K, >= 2.
        k_max: largest K, >= k_min (capped at N - 1 and at the number of distinct points).
        generator: torch.Generator for the sample and the seeding, or None.
        sample: points the silhouette is computed on (>= 2), or None for all.

    Returns:
        best_k: the chosen K.
        scores: {K: mean silhouette} for every K tried (NaN where it could not be computed).

    Raises:
        ValueError: if k_min < 2, k_max < k_min, x has fewer than k_min + 1 points or fewer than
            k_min distinct points, sample < 2, x is not 2-D floating point or not finite, or no
            K could be scored.
    """
    _check_points(x)
    _check_sample(sample)
    n = len(x)
    if k_min < 2:
        raise ValueError(f"`k_min` must be >= 2 (the silhouette needs two clusters), got {k_min}.")
    if k_max < k_min:
        raise ValueError(f"`k_max` must be >= k_min={k_min}, got {k_max}.")
    if n < k_min + 1:
        raise ValueError(f"`x` must have at least k_min + 1 = {k_min + 1} points, got N={n}.")
    idx = _sample_indices(n, sample, generator, x.device)
    scores: dict[int, float] = {}
    for k in range(k_min, min(k_max, n - 1) + 1):
        try:
            labels, _ = kmeans(x, k, generator)
        except _TooFewDistinctPoints as e:
            if k == k_min:
                raise
            logger.info("choose_k: stopping at K=%d, x has only %d distinct points", k - 1, e.distinct)
            break
        sub_x, sub_labels = (x, labels) if idx is None else (x[idx], labels[idx])
        if len(torch.unique(sub_labels)) < 2:
            logger.warning("choose_k: K=%d leaves a single cluster among the sampled points", k)
            scores[k] = math.nan
            continue
        scores[k] = float(_silhouette_values(sub_x, sub_labels).mean())
    valid = {k: s for k, s in scores.items() if not math.isnan(s)}
    if not valid:
        raise ValueError(
            f"no K in [{k_min}, {k_max}] could be scored: every clustering left a single cluster "
            f"among the {sample} sampled points; increase `sample`."
        )
    best = max(valid, key=lambda k: (valid[k], -k))
    return best, scores
