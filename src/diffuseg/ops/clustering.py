"""Grouping attention maps: symmetric-KL merging (DiffSeg) and k-means refinement."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["anchor_grid", "symmetric_kl", "anchor_distances", "merge_attention", "greedy_merge", "kmeans_refine"]

_EPS = 1e-30  # clamp before log: float32 keeps 1e-30 (fp16 does not, see merge_attention)


def anchor_grid(size: int, num_per_side: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Evenly spaced anchor coordinates along one axis of a grid of `size` cells.

    As google/diffseg `generate_sampling_grid` (l.22-30): step (size-1)//(n-1), centred; for
    size 64 and 16 anchors: 1, 5, ..., 61.

    Returns:
        int64 tensor (num_per_side,) of indices in [0, size), on `device` (default the CPU).

    Raises:
        ValueError: if `num_per_side` < 1 or > `size`.
    """
    if num_per_side < 1 or num_per_side > size:
        raise ValueError(f"`anchors` must be in [1, {size}] for a {size}-cell grid, got {num_per_side}.")
    if num_per_side == 1:
        return torch.tensor([(size - 1) // 2], device=device)
    step = (size - 1) // (num_per_side - 1)
    start = (size - 1 - step * (num_per_side - 1)) // 2
    return start + step * torch.arange(num_per_side, device=device)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pairwise symmetric KL distance, ½[KL(p‖q) + KL(q‖p)], between two sets of distributions.

    Computed as ½(h_p + h_q - p·log q - q·log p) with h = Σ p log p: two matrix products
    instead of materialising (P, Q, D) differences.

    Args:
        p: (P, D) distributions (rows sum to 1), any float dtype; computed in float32 or higher.
        q: (Q, D) distributions.

    Returns:
        (P, Q) distances >= 0 (tiny negatives from rounding are clamped to 0).
    """
    dtype = torch.promote_types(p.dtype, torch.float32)
    p, q = p.to(dtype), q.to(dtype)
    lp, lq = p.clamp_min(_EPS).log(), q.clamp_min(_EPS).log()
    hp = (p * lp).sum(1)  # (P,)
    hq = (q * lq).sum(1)  # (Q,)
    cross = p @ lq.T + (lp @ q.T)  # (P, Q): p·log q + q·log p
    return (0.5 * (hp[:, None] + hq[None, :] - cross)).clamp_min_(0)


def _group_means(members: torch.Tensor, maps: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(G, D) means of the (N, D) `maps` in each of the (G, N) boolean groups, each map counted
    `weights[n]` times (None: once)."""
    m = members.to(maps.dtype)
    if weights is not None:
        m = m * weights.to(maps.dtype)[None, :]
    return (m @ maps) / m.sum(1, keepdim=True)


def _unique_rows(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a (A, N) boolean matrix in order of first occurrence, and for
    each row of `members` the index of its distinct row: ((U, N), (A,) int64).

    Computed on `members`' device (no copy to the host): two rows are equal when their overlap
    count equals both their sizes; the counts are integers <= N, exact in float32 for
    N < 2**24 (also with TF32 or bf16 matmul inputs: 0 and 1 are exact in every format).
    """
    a = members.shape[0]
    m = members.to(torch.float32)
    overlap = m @ m.T  # (A, A) shared True entries
    size = m.sum(1)
    equal = (overlap == size[:, None]) & (overlap == size[None, :])
    first = equal.to(torch.uint8).argmax(1)  # the first row equal to each row (itself at the latest)
    is_first = first == torch.arange(a, device=members.device)
    rank = is_first.cumsum(0) - 1  # index among the distinct rows, in order of first occurrence
    return members[is_first], rank[first]


def _greedy_groups(close: torch.Tensor) -> torch.Tensor:
    """The reference's greedy grouping (`mask_merge`): in row order, each row not yet matched
    takes every column close to it as its group and marks them matched. (K, K) bool -> (G, K).

    Computed on `close`'s device: row i leads a group iff no earlier leader j < i has
    ``close[j, i]``. That recursion has one solution, reached by fixed-point rounds from "all
    rows lead" (after round r the first r + 1 rows are settled), so the loop ends after at most
    K rounds, in practice after the longest chain of leaders; each round syncs one flag
    (`torch.equal`), no tensor goes to the host.
    """
    k = close.shape[0]
    claims = torch.ones(k, k, dtype=torch.bool, device=close.device).triu_(1).logical_and_(close).to(torch.float32)
    leader = torch.ones(k, dtype=torch.bool, device=close.device)
    for _ in range(k):
        settled = (leader.to(torch.float32)[None] @ claims)[0] == 0  # not claimed by an earlier leader
        if torch.equal(settled, leader):
            break
        leader = settled
    return close[leader]


def greedy_merge(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """One greedy KL merge of distributions (google/diffseg ``mask_merge``'s iterations >= 1;
    Seg4Diff's ``mask_merge`` of text-token maps): in row order, each map not yet matched takes
    every map within symmetric KL `threshold` of it (`symmetric_kl`) as its group, matched ones
    included, and is replaced by the group's mean.

    Args:
        maps: (K, D) distributions (rows sum to 1).
        threshold: the KL threshold, > 0.

    Returns:
        (G, D) group means, G <= K, in the order of the maps that started them.
    """
    if not threshold > 0:
        raise ValueError(f"`threshold` must be > 0, got {threshold!r}.")
    close = symmetric_kl(maps, maps) < threshold
    close.fill_diagonal_(True)  # a map is in its own group (KL(p, p) = 0 up to rounding)
    return _group_means(_greedy_groups(close), maps.to(torch.promote_types(maps.dtype, torch.float32)))


def anchor_distances(aggregated: torch.Tensor, anchors: int) -> torch.Tensor:
    """Symmetric KL distance of each anchor's map to every map: what `merge_attention`'s first
    iteration thresholds, and the same for any threshold (so callers that re-merge one image
    with other thresholds can compute it once).

    Args:
        aggregated: (R*R', R, R') aggregated maps, float.
        anchors: anchors per side, in [1, min(R, R')].

    Returns:
        (anchors**2, R*R') float32 (or float64) distances, anchors in row-major grid order.
    """
    n, h, w = aggregated.shape
    flat = aggregated.reshape(n, h * w).to(torch.promote_types(aggregated.dtype, torch.float32))
    rows, cols = anchor_grid(h, anchors, flat.device), anchor_grid(w, anchors, flat.device)
    idx = (rows[:, None] * w + cols[None, :]).reshape(-1)  # ij indexing
    return symmetric_kl(flat[idx], flat)


def merge_attention(
    aggregated: torch.Tensor,
    anchors: int = 16,
    thresholds: Sequence[float] = (1.1, 1.1, 1.1),
    anchor_kl: torch.Tensor | None = None,
) -> torch.Tensor:
    """Iteratively merge attention maps whose symmetric KL distance is below a threshold.

    google/diffseg `segmentor.py::mask_merge` / `generate_masks` (l.88-145):
    - iteration 0: every anchor (a `anchors` x `anchors` grid over the R x R queries) becomes
      the mean of ALL maps within `thresholds[0]` of it (one matrix product; groups overlap);
    - iterations i >= 1: a greedy pass in proposal order: each proposal not yet matched forms
      the group {j : D(i, j) < thresholds[i]} and is replaced by its mean; the group is marked
      matched, but matched proposals may still join later groups (the reference's behaviour).

    Anchors whose iteration-0 groups are equal give equal proposals: each distinct group is
    averaged once and counted as often as it occurs in the next iteration's means, which is the
    reference's result with less work (the toy model's scenes have 150-250 distinct groups
    among 256 anchors). With a single threshold the duplicates are returned, one per anchor.

    Deviation (a fix): a proposal always belongs to its own group; the reference relies on
    KL(p, p) < threshold, which float rounding could break for a tiny threshold.

    Deviation (a fix): the reference computes iteration 0 in float16, where the log of
    underflowed values gives inf/NaN and NaN distances silently fail the threshold test; here
    all distances are float32 (or float64 if given) with a 1e-30 clamp before the log.

    Args:
        aggregated: (R*R, R, R) aggregated maps (`aggregate_self_attention`), float.
        anchors: anchors per side, in [1, R].
        thresholds: one KL threshold (> 0) per iteration; len(thresholds) iterations.
        anchor_kl: `anchor_distances(aggregated, anchors)` if already computed, else None.

    Returns:
        (K, R, R) merged proposal maps, float32, K <= anchors**2.

    Raises:
        ValueError: on an empty or non-positive threshold list, or `anchors` out of range.
    """
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not t > 0 for t in thresholds):
        raise ValueError(f"`thresholds` must be a non-empty sequence of values > 0, got {thresholds}.")
    if aggregated.ndim != 3 or aggregated.shape[0] != aggregated.shape[1] * aggregated.shape[2]:
        raise ValueError(f"`aggregated` must have shape (R*R, R, R), got {tuple(aggregated.shape)}.")
    n, h, w = aggregated.shape
    dtype = torch.promote_types(aggregated.dtype, torch.float32)
    flat = aggregated.reshape(n, h * w).to(dtype)  # (N, D)
    if anchor_kl is None:
        anchor_kl = anchor_distances(aggregated, anchors)
    elif anchor_kl.shape != (anchors * anchors, n):
        raise ValueError(f"`anchor_kl` must have shape ({anchors * anchors}, {n}), got {tuple(anchor_kl.shape)}.")
    # iteration 0: anchors against all maps, groups overlap. Anchors with the same group give
    # the same mean: each distinct group is averaged once and counted as often as it occurs.
    members, inverse = _unique_rows(anchor_kl < thresholds[0])  # (U, N); each anchor matches itself
    proposals = _group_means(members, flat)
    if len(thresholds) == 1:
        proposals = proposals[inverse]  # one proposal per anchor, as the reference returns
    weights = torch.bincount(inverse, minlength=len(members))
    for tau in thresholds[1:]:
        close = symmetric_kl(proposals, proposals) < tau  # (K, K)
        close.fill_diagonal_(True)  # a proposal is in its own group (KL(p, p) = 0 up to rounding)
        proposals = _group_means(_greedy_groups(close), proposals, weights)  # `greedy_merge`, weighted
        weights = None
    return proposals.reshape(-1, h, w).float()


def kmeans_refine(
    proposals: torch.Tensor, aggregated: torch.Tensor, max_iter: int = 300, tol: float = 1e-4
) -> torch.Tensor:
    """Refine proposals with k-means over all maps, initialised at the proposals.

    As the reference's sklearn ``KMeans(n_clusters=K, init=proposals, n_init=1)``: Lloyd
    iterations on the N flattened maps; each proposal becomes its cluster's mean. An empty
    cluster keeps its previous centre (sklearn relocates it instead).

    Args:
        proposals: (K, R, R) initial centres.
        aggregated: (N, R, R) maps to cluster.
        max_iter: Lloyd iterations at most (sklearn default 300).
        tol: stop when the centres' squared shift is below `tol` x mean feature variance
            (sklearn's relative tolerance).

    Returns:
        (K, R, R) float32 refined centres.
    """
    k, h, w = proposals.shape
    x = aggregated.reshape(-1, h * w).float()
    centres = proposals.reshape(k, h * w).float().clone()
    threshold = tol * x.var(0).mean()
    x_sq = (x * x).sum(1, keepdim=True)
    for _ in range(max_iter):
        d = x_sq - 2 * x @ centres.T + (centres * centres).sum(1)[None]  # (N, K) squared distances
        assign = d.argmin(1)
        onehot = torch.zeros(len(x), k, dtype=x.dtype, device=x.device)
        onehot[torch.arange(len(x)), assign] = 1
        counts = onehot.sum(0)
        new = torch.where(counts[:, None] > 0, (onehot.T @ x) / counts.clamp_min(1)[:, None], centres)
        shift = ((new - centres) ** 2).sum()
        centres = new
        if shift <= threshold:
            break
    return centres.reshape(k, h, w)
