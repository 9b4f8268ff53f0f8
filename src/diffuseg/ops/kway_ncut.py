"""Discrete K-way normalized cut by proximal linearisation, after Falcon (ICLR 2026).

Falcon: "Fast Proximal Linearization of Normalized Cuts", ICLR 2026 (arXiv 2504.05613,
https://openreview.net/forum?id=PvWHzAf9qp). The paper's code is not public (KordingLab/Falcon
could not be fetched); this is a re-implementation from the paper's description, not a port.

The objective, for a partition of the N nodes into K segments A_1..A_K with one-hot indicator
columns x_k of X (N, K), degrees d = W 1 and D = diag(d)::

    NCut(X) = sum_k cut(A_k, rest) / vol(A_k) = K - sum_k x_k^T W x_k / x_k^T D x_k

An empty segment adds 1 (its association is 0), so emptying one never lowers NCut by itself.

What is reproduced (the v2 / camera-ready algorithm):

* A solver on the *discrete* objective, with no spectral relaxation of the cut itself:
  the normalised association F(X) = sum_k a_k / v_k (a_k = x_k^T W x_k, v_k = d^T x_k) is
  linearised at the current X, with the closed-form gradient weighted by the segment volumes
  ``dF/dX_ik = (2 (W x_k)_i - 2 W_ii X_ik + W_ii) / v_k - d_i a_k / v_k^2`` (`_gradient`). The
  diagonal of W is written linearly (exact on one-hot X, ours): with DiffCut's affinity the
  self-loop W_ii = 1 dominates a token's degree, and the plain gradient 2 (W x_k)_i / v_k - ...
  scores every row's own segment so high that no row ever moves.
* Row-wise one-hot proximal updates with inertia: each row takes
  ``argmax_k (G_ik + rho * X_ik)``, the proximal term rho ||X - X_t||^2 / 2 being a bonus
  rho on the row's current segment (rows whose gain is at most rho stay where they are).
* Monotone backtracking on the proximal parameter: a step that does not lower NCut is
  refused and rho is raised (to the median gain of the rows that moved, so about half of
  them stay at the next try) until a step lowers NCut or no row moves. NCut never worsens;
  the history of accepted values is non-increasing (`kway_ncut_affinity(history=...)`).

What is not reproduced, or is ours:

* Initialisation (the paper's is not public): k-means++ (`diffuseg.ops.kmeans`, seeded from a
  `torch.Generator`, default a local one with seed 0) on the row-normalised embedding of the
  top-K eigenvectors of D^-1/2 W D^-1/2 (Ng, Jordan & Weiss 2001), the same eigenvectors
  whose eigenvalues give K.
* K: the paper fixes K per dataset. Here, unless `num_segments` is given, K comes from the
  eigengap rule (`eigengap_segments`), which looks only at the affinity.
* Falcon v1's regularised affinity W^alpha + lambda diag(D), its inertial (momentum)
  extrapolation and its refinement stage ("DREAM") are not used; DiffCut's affinity
  (`diffuseg.ops.ncut.affinity_matrix`) and its own PAMR refinement are.
* The paper's linear-convergence guarantee (Kurdyka-Lojasiewicz) is not checked; the solver
  stops when no row moves, when backtracking cannot lower NCut, or after `max_iter` steps.

Everything is computed in float32 on the affinity's device (the eigendecomposition on the CPU
through scipy, elsewhere `torch.linalg.eigh`). Zero-degree nodes (no edge at all, no self
loop) change no cut or volume; they form one segment of their own, as in `diffuseg.ops.ncut`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from .kmeans import kmeans
from .ncut import token_affinity

__all__ = ["eigengap_segments", "kway_ncut_affinity", "kway_normalized_cut", "ncut_value"]

logger = logging.getLogger(__name__)

# Relative tolerance of the symmetry check on the affinity.
_SYMMETRY_RTOL = 1e-4
# Graphs up to this many nodes use the dense eigensolver (faster than Lanczos there).
_DENSE_MAX = 512
# ARPACK's relative tolerance on the Ritz values.
_ARPACK_TOL = 1e-6
# Eigengaps closer than this are ties (float32 eigenvalues are accurate to about 1e-6).
_GAP_TIE = 1e-5
# A step is accepted only if it lowers NCut by more than this (float32 noise).
_MIN_DECREASE = 1e-6


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    return value


def _check_affinity(affinity: torch.Tensor) -> torch.Tensor:
    """Validate a symmetric non-negative finite (N, N) tensor; returns it in float32."""
    if not isinstance(affinity, torch.Tensor) or affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(
            f"`affinity` must be a square (N, N) tensor, got {tuple(getattr(affinity, 'shape', ())) or affinity!r}."
        )
    if not affinity.is_floating_point():
        raise ValueError(f"`affinity` must have a floating-point dtype, got {affinity.dtype}.")
    w = affinity.float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("`affinity` contains NaN or inf; it must be finite.")
    if w.numel() and float(w.min()) < 0:
        raise ValueError(f"`affinity` must be non-negative, got a minimum of {float(w.min()):.3g}.")
    if w.numel() and not torch.allclose(w, w.T, rtol=_SYMMETRY_RTOL, atol=_SYMMETRY_RTOL * float(w.max())):
        raise ValueError("`affinity` must be symmetric (W == W^T up to a relative 1e-4).")
    return w


def ncut_value(affinity: torch.Tensor, labels: torch.Tensor, num_segments: int | None = None) -> float:
    """The K-way normalized cut of a partition: sum_k cut(A_k, rest) / vol(A_k).

    Args:
        affinity: symmetric non-negative float tensor (N, N).
        labels: int tensor (N,) with values in [0, K).
        num_segments: K; None = labels.max() + 1. Each empty segment adds 1.

    Returns:
        NCut in [0, K] (float). Zero-degree nodes count for nothing.
    """
    w = affinity.float()
    k = int(labels.max()) + 1 if num_segments is None else num_segments
    x = F.one_hot(labels.long(), k).to(w.dtype)  # (N, K)
    assoc = (x * (w @ x)).sum(0)  # (K,)
    vol = w.sum(1) @ x  # (K,)
    return _ncut(assoc, vol)


def _ncut(assoc: torch.Tensor, vol: torch.Tensor) -> float:
    """K - sum of a_k / v_k over the segments of positive volume (empty ones add 1)."""
    ratio = torch.where(vol > 0, assoc / vol.clamp_min(torch.finfo(vol.dtype).tiny), torch.zeros_like(vol))
    return float(len(vol) - ratio.double().sum())


def _top_eigenpairs(sym: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m largest eigenvalues (m,) in decreasing order and their eigenvectors (n, m) of the
    symmetric float32 matrix `sym` (n, n), on its device.

    Dense `torch.linalg.eigh` up to `_DENSE_MAX` nodes or off the CPU; above it on the CPU,
    ARPACK Lanczos (`scipy.sparse.linalg.eigsh`, which="LA") from a fixed start vector (same
    result on every run), falling back to the dense solver if it fails.
    """
    n = sym.shape[0]
    if sym.device.type == "cpu" and n > _DENSE_MAX and m < n - 1:
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

        v0 = np.random.default_rng(0).standard_normal(n).astype(np.float32)  # local, fixed
        try:
            values, vectors = eigsh(sym.numpy(), k=m, which="LA", v0=v0, tol=_ARPACK_TOL)
            if np.isfinite(values).all() and np.isfinite(vectors).all():
                order = np.argsort(values)[::-1].copy()
                return torch.from_numpy(values[order]), torch.from_numpy(vectors[:, order])
        except (ArpackError, ArpackNoConvergence) as err:
            logger.debug("k-way ncut: ARPACK failed (%s); dense eigh instead.", err)
    values, vectors = torch.linalg.eigh(sym)  # increasing
    return values.flip(0)[:m], vectors.flip(1)[:, :m]


def _spectrum(w: torch.Tensor, d: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-m eigenpairs of D^-1/2 W D^-1/2 (d > 0): eigenvalues (m,) in [-1, 1], decreasing."""
    s = d.rsqrt()  # (n,)
    sym = s[:, None] * w * s[None, :]  # (n, n)
    return _top_eigenpairs((sym + sym.T) / 2, m)


def _eigengap(values: torch.Tensor, min_segments: int, max_segments: int) -> int:
    """K in [min_segments, max_segments] maximising lambda_K - lambda_{K+1}, the smallest such K
    when gaps tie within `_GAP_TIE` (float32 noise); lambda_{n+1} is taken as 0 when K may reach n."""
    lam = torch.cat([values.double(), values.new_zeros(1, dtype=torch.float64)])
    gaps = lam[min_segments - 1 : max_segments] - lam[min_segments : max_segments + 1]
    return min_segments + int((gaps >= gaps.max() - _GAP_TIE).nonzero()[0, 0])


def eigengap_segments(affinity: torch.Tensor, max_segments: int = 8, min_segments: int = 2) -> int:
    """The K rule: the number of segments at the largest eigengap of the normalised affinity.

    With the eigenvalues lambda_1 = 1 >= lambda_2 >= ... of D^-1/2 W D^-1/2 (a graph of K
    disconnected blocks has exactly K eigenvalues 1), K is the k in
    [min_segments, min(max_segments, N)] of largest gap lambda_k - lambda_{k+1} (the smallest
    such k when gaps tie within 1e-5). It reads the affinity only, never a ground truth.

    Args:
        affinity: symmetric non-negative float tensor (N, N) whose nodes all have degree > 0.
        max_segments: the largest K considered, >= 1 (the top max_segments + 1 eigenvalues are
            computed).
        min_segments: the smallest K considered, in [1, max_segments].

    Returns:
        K, an int in [min(min_segments, N), min(max_segments, N)].

    Raises:
        ValueError: on a bad affinity, bad bounds, or a node of zero degree.
    """
    w = _check_affinity(affinity)
    _check_bounds(max_segments, min_segments)
    d = w.sum(1)
    if bool((d <= 0).any()):
        raise ValueError("`affinity` has nodes of zero degree; the eigengap rule needs every degree > 0.")
    n = w.shape[0]
    top = min(max_segments, n)
    values, _ = _spectrum(w, d, min(top + 1, n))
    return _eigengap(values, min(min_segments, top), top)


def _check_bounds(max_segments: int, min_segments: int) -> None:
    _check_int(max_segments, "max_segments", 1)
    _check_int(min_segments, "min_segments", 1)
    if min_segments > max_segments:
        raise ValueError(f"`min_segments` {min_segments} is more than `max_segments` {max_segments}.")


def _initial_labels(vectors: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ / Lloyd on the row-normalised spectral embedding vectors[:, :k] (n, k): (n,)
    int64 labels in [0, k) (fewer segments when the embedding has fewer than k distinct rows)."""
    embedding = F.normalize(vectors[:, :k].float(), dim=1)  # (n, k), NJW row normalisation
    distinct = int(torch.unique(embedding, dim=0).shape[0])
    labels, _ = kmeans(embedding, min(k, distinct), generator=generator)
    return labels


def _gradient(
    wx: torch.Tensor, x: torch.Tensor, assoc: torch.Tensor, vol: torch.Tensor, d: torch.Tensor, diag: torch.Tensor
) -> torch.Tensor:
    """dF/dX (n, K) of F = sum_k a_k / v_k, the association written exactly for one-hot X as
    a_k = x_k^T (W - diag W) x_k + diag(W)^T x_k:
    (2 (W x_k)_i - 2 W_ii X_ik + W_ii) / v_k - d_i a_k / v_k^2. An empty segment's column is
    the association a single node would bring it, W_ii / d_i."""
    safe = vol.clamp_min(torch.finfo(vol.dtype).tiny)  # (K,)
    off = 2 * (wx - diag[:, None] * x) + diag[:, None]  # (n, K)
    grad = off / safe - d[:, None] * (assoc / safe**2)[None, :]  # (n, K)
    return torch.where(vol[None, :] > 0, grad, (diag / d)[:, None].expand_as(grad))


def _proximal_ascent(
    w: torch.Tensor, d: torch.Tensor, labels: torch.Tensor, k: int, max_iter: int, inertia: float, history: list
) -> torch.Tensor:
    """Proximal-linearised row-wise one-hot updates from `labels` (n,) in [0, k) (module
    docstring); returns the final labels (n,) int64. Appends each accepted NCut to `history`."""
    n = w.shape[0]
    x = F.one_hot(labels, k).to(w.dtype)  # (n, K)
    wx = w @ x  # (n, K): (W x_k)_i
    vol = d @ x  # (K,)
    assoc = (x * wx).sum(0)  # (K,)
    value = _ncut(assoc, vol)
    history.append(value)
    diag = torch.diagonal(w)  # (n,)
    for _ in range(max_iter):
        grad = _gradient(wx, x, assoc, vol, d, diag)  # (n, K)
        current = grad.gather(1, labels[:, None])[:, 0]  # (n,)
        others = grad.scatter(1, labels[:, None], float("-inf"))  # (n, K)
        best_gain, best = others.max(1)  # (n,)
        margin = best_gain - current  # (n,): how much a row's linearised F gains by moving
        rho, accepted = inertia, False
        while True:
            moving = (margin > rho).nonzero()[:, 0]  # rows whose argmax of G + rho X changes
            if moving.numel() == 0:
                break
            delta = F.one_hot(best[moving], k).to(w.dtype) - x[moving]  # (m, K)
            new_wx = wx + w[:, moving] @ delta  # (n, K)
            new_x = x.clone()
            new_x[moving] += delta
            new_vol = vol + d[moving] @ delta
            new_assoc = (new_x * new_wx).sum(0)
            new_value = _ncut(new_assoc, new_vol)
            if new_value < value - _MIN_DECREASE * max(1.0, value):
                labels = labels.clone()
                labels[moving] = best[moving]
                x, wx, vol, assoc, value, accepted = new_x, new_wx, new_vol, new_assoc, new_value, True
                history.append(value)
                break
            # backtracking: raise rho to the median gain of the rows that moved
            rho = max(rho, float(margin[moving].median()))
        if not accepted:
            break
    logger.debug("k-way ncut: %d nodes, K=%d, %d accepted steps, NCut %.4f.", n, k, len(history) - 1, value)
    return labels


def _check_init(init: torch.Tensor | None, n: int, num_segments: int | None, device) -> torch.Tensor | None:
    """Validate initial labels: int (N,) in [0, num_segments) (any K >= 1 without it)."""
    if init is None:
        return None
    if not isinstance(init, torch.Tensor) or init.shape != (n,) or init.is_floating_point() or init.is_complex():
        raise ValueError(f"`init` must be an int tensor of shape ({n},), got {getattr(init, 'shape', init)!r}.")
    if n and (int(init.min()) < 0 or (num_segments is not None and int(init.max()) >= num_segments)):
        allowed = "[0, num_segments)" if num_segments is not None else ">= 0"
        raise ValueError(f"`init` labels must be {allowed}, got values in [{int(init.min())}, {int(init.max())}].")
    return init.to(device=device, dtype=torch.long)


def kway_ncut_affinity(
    affinity: torch.Tensor,
    num_segments: int | None = None,
    *,
    max_segments: int = 8,
    min_segments: int = 2,
    max_iter: int = 100,
    inertia: float = 0.0,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    history: list[float] | None = None,
) -> torch.Tensor:
    """Discrete K-way normalized cut of a graph (Falcon-style proximal linearisation).

    Args:
        affinity: symmetric non-negative float tensor (N, N), any device and float dtype
            (computed in float32).
        num_segments: K, in [1, N]; None = the eigengap rule (`eigengap_segments`) with
            `min_segments` and `max_segments` (or, with `init`, its number of labels).
        max_segments: the largest K the eigengap rule may choose, >= 1.
        min_segments: the smallest K the eigengap rule may choose, in [1, max_segments].
        max_iter: proximal steps at most, >= 0 (0 = the initialisation only).
        inertia: the base proximal weight rho >= 0: a row moves only if its linearised gain
            exceeds it (backtracking raises it further).
        generator: seeds the k-means++ initialisation; None = a CPU generator seeded with 0.
        init: initial labels, int (N,) in [0, K), instead of the spectral initialisation (a
            warm start); every node must then have degree > 0.
        history: if given, the NCut of the initialisation and of every accepted step are
            appended to it (non-increasing).

    Returns:
        int64 tensor (N,) of labels in [0, K'), K' <= K (a segment that empties, which never
        lowers NCut by itself, is dropped), on the affinity's device; relabelled 0.. in order
        of the segments' ids.

    Raises:
        ValueError: if `affinity` is not square, symmetric, non-negative and finite, if
            `num_segments` is more than N (naming both numbers), or any setting is out of range.
    """
    w = _check_affinity(affinity)
    n = w.shape[0]
    if num_segments is not None and _check_int(num_segments, "num_segments", 1) > n:
        raise ValueError(f"`num_segments` {num_segments} is more than the {n} nodes of the graph.")
    _check_bounds(max_segments, min_segments)
    _check_int(max_iter, "max_iter", 0)
    if isinstance(inertia, bool) or not isinstance(inertia, (int, float)) or not 0 <= inertia < float("inf"):
        raise ValueError(f"`inertia` must be a finite number >= 0, got {inertia!r}.")
    init = _check_init(init, n, num_segments, w.device)
    history = [] if history is None else history
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    labels = torch.zeros(n, dtype=torch.long, device=w.device)
    d = w.sum(1)  # (N,)
    connected = (d > 0).nonzero()[:, 0]
    if connected.numel() < n:  # zero-degree nodes: one segment of their own, out of the cut
        if init is not None:
            raise ValueError("`init` needs every node of `affinity` to have degree > 0.")
        if connected.numel() == 0 or num_segments == 1:
            return labels
        k = None if num_segments is None else min(num_segments - 1, connected.numel())
        sub = w.index_select(0, connected).index_select(1, connected)
        rest = kway_ncut_affinity(
            sub, k, max_segments=max_segments, min_segments=min_segments,
            max_iter=max_iter, inertia=inertia, generator=generator, history=history,
        )  # fmt: skip
        labels[connected] = rest + 1
        return labels
    if n < 2 or num_segments == 1:
        return labels
    if init is not None:
        k = num_segments if num_segments is not None else int(init.max()) + 1
    else:
        top = min(max_segments, n) if num_segments is None else num_segments
        values, vectors = _spectrum(w, d, min(top + 1, n))
        k = _eigengap(values, min(min_segments, top), top) if num_segments is None else num_segments
        init = _initial_labels(vectors.to(w.device), k, generator)
    labels = _proximal_ascent(w, d, init, k, max_iter, float(inertia), history)
    _, dense = torch.unique(labels, return_inverse=True)
    return dense.long()


def kway_normalized_cut(
    features: torch.Tensor,
    alpha: float = 10.0,
    num_segments: int | None = None,
    *,
    max_segments: int = 8,
    min_segments: int = 2,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Segment a feature map by K-way normalized cut of DiffCut's affinity.

    Args:
        features: float tensor (C, h, w), one C-dim feature per token; any device.
        alpha: affinity exponent, > 0 (`diffuseg.ops.ncut.affinity_matrix`; DiffCut: 10).
        num_segments: K in [1, h * w]; None = the eigengap rule, K in
            [min_segments, max_segments].
        max_segments, min_segments, max_iter, generator: see `kway_ncut_affinity`.

    Returns:
        int64 tensor (h, w) of labels in [0, K'), on the features' device. Fewer than 2 tokens
        or constant features give a single segment (all zeros).

    Raises:
        ValueError: on a tensor that is not (C, h, w), non-finite features, a non-positive
            `alpha`, or `num_segments` larger than h * w.
    """
    affinity = token_affinity(features, alpha)  # (N, N)
    h, w = features.shape[1:]
    if num_segments is not None and _check_int(num_segments, "num_segments", 1) > h * w:
        raise ValueError(f"`num_segments` {num_segments} is more than the {h * w} tokens of the {h}x{w} grid.")
    if affinity is None:
        return torch.zeros((h, w), dtype=torch.long, device=features.device)
    labels = kway_ncut_affinity(
        affinity, num_segments, max_segments=max_segments, min_segments=min_segments,
        max_iter=max_iter, generator=generator,
    )  # fmt: skip
    return labels.reshape(h, w)
