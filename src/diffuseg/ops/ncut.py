"""Recursive two-way normalized cut (Shi & Malik) and DiffCut's concept assignment.

DiffCut: Couairon et al., NeurIPS 2024. Ported from https://github.com/PaulCouairon/DiffCut
at commit aa16df4, `diffcut/recursive_normalized_cut.py` (class `DiffCut`, l.7-173). What
changed:

* The 100-threshold Shi-Malik search is one batched quadratic form instead of a Python loop
  with a `.item()` sync per threshold (reference `get_bipartition`, l.35-54).
* The recursion tracks the active tokens of a branch as an explicit index set. The reference
  paints explored tokens, zeroes the painted x painted block and then keeps only the rows that
  contain no exact 0 (`get_affinity_matrix`, l.7-18). That also silently drops every token
  whose affinity row holds an exact 0 for another reason: the global-minimum pair (exactly 0
  after min-max normalisation) and any affinity that underflows under ``** alpha``. Such
  tokens take no part in deeper cuts and end up in the all-negative leaf of their branch.
  Here every token of a branch goes to exactly one of its two children. The reference
  behaviour is available as ``drop_zero_rows=True``.
* An eigensolver failure (or a non-finite Fiedler vector) ends that branch; the reference
  returns None and then crashes on it (l.25-33, l.104).
* The Fiedler vector comes from a matrix-free Lanczos solve above a couple of hundred tokens
  (`diffuseg.ops.fiedler`; the reference runs a full dense ``torch.linalg.eigh``), the dense
  solver below that and as the fallback. The cuts are the same (``benchmarks/bench_ncut.py``).
* Sub-graphs are taken with ``index_select`` (one copy) rather than ``A[idx][:, idx]`` (two).
* Tokens with zero degree (no affinity to anything, themselves included) are split off as
  their own segment instead of producing inf/NaN through D^-1/2.
* Non-square grids are allowed; nothing is hard-coded to CUDA.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .fiedler import check_eigensolver, fiedler_vector
from .masks import argmax0

__all__ = [
    "affinity_matrix",
    "token_affinity",
    "bipartition",
    "recursive_ncut_affinity",
    "recursive_normalized_cut",
    "assign_concepts",
]

logger = logging.getLogger(__name__)

# Features whose pairwise cosine similarities span less than this are treated as constant.
_CONSTANT_RANGE = 1e-5


def affinity_matrix(features: torch.Tensor, alpha: float = 10.0) -> torch.Tensor | None:
    """DiffCut's token affinity: cosine similarity, min-max normalised, raised to `alpha`.

    Reference: `recursive_ncut` level 0 (l.91-96).

    Args:
        features: float tensor (C, N), one column per token; any scale (L2-normalised here).
        alpha: the exponent (paper: alpha), > 0.

    Returns:
        float32 tensor (N, N) with values in [0, 1], or None when the features are constant
        (all cosine similarities equal up to 1e-5), where min-max normalisation is undefined.
    """
    feats = F.normalize(features.float(), p=2, dim=0)  # (C, N)
    cos = feats.T @ feats  # (N, N)
    lo, hi = cos.min(), cos.max()
    if not bool(hi - lo > _CONSTANT_RANGE):
        return None
    return ((cos - lo) / (hi - lo)) ** alpha


def bipartition(
    affinity: torch.Tensor, num_thresholds: int = 100, margin: float = 0.99, *, eigensolver: str = "auto"
) -> tuple[torch.Tensor, float] | None:
    """Best two-way normalized cut of one graph.

    Thresholds the generalised Fiedler vector y at `num_thresholds` values evenly spaced in
    [margin * min y, margin * max y] and keeps the partition of smallest Shi-Malik ncut
    z^T (D - A) z / z^T D z, z = (1 + x) - b (1 - x), x = +-1, b = k / (1 - k), k = the
    degree share of the positive side (reference `get_bipartition`, l.35-54). All thresholds
    are scored in one batched quadratic form.

    Args:
        affinity: symmetric non-negative float tensor (n, n), n >= 2.
        num_thresholds: how many thresholds to try (reference: 100).
        margin: the thresholds span margin * [min y, max y] (reference: 0.99).
        eigensolver: "auto", "dense" or "lanczos" (`diffuseg.ops.fiedler`).

    Returns:
        (positive side as a bool tensor (n,), its ncut value), or None when the graph cannot
        be cut (eigensolver failure, a degenerate vector, no proper split).
    """
    degree = affinity.sum(dim=1)  # (n,)
    isolated = degree <= 0
    if bool(isolated.any()):
        # No edge leaves an isolated token: cutting it off costs nothing.
        return None if bool(isolated.all()) else (~isolated, 0.0)
    y = fiedler_vector(affinity, degree, eigensolver)
    if y is None:
        return None
    thresholds = torch.linspace(
        float(y.min()) * margin, float(y.max()) * margin, num_thresholds, device=y.device, dtype=y.dtype
    )  # (T,)
    positive = y[:, None] > thresholds[None, :]  # (n, T)
    x = positive.to(y.dtype) * 2 - 1  # (n, T) in {-1, +1}
    k = (degree[:, None] * positive).sum(dim=0) / degree.sum()  # (T,)
    b = k / (1 - k)
    z = (1 + x) - b[None, :] * (1 - x)  # (n, T)
    laplacian_z = degree[:, None] * z - affinity @ z  # (D - A) z, (n, T)
    ncut = (z * laplacian_z).sum(dim=0) / (degree[:, None] * z * z).sum(dim=0)  # (T,)
    proper = positive.any(dim=0) & ~positive.all(dim=0) & torch.isfinite(ncut)
    if not bool(proper.any()):
        return None
    ncut = torch.where(proper, ncut, torch.full_like(ncut, float("inf")))
    best = int(torch.argmin(ncut))  # first minimum, like np.argmin in the reference
    return positive[:, best], float(ncut[best])


def recursive_ncut_affinity(
    affinity: torch.Tensor,
    tau: float = 0.5,
    *,
    num_thresholds: int = 100,
    drop_zero_rows: bool = False,
    cuts: dict[bytes, tuple[torch.Tensor, float] | None] | None = None,
    eigensolver: str = "auto",
) -> torch.Tensor:
    """Recursive two-way normalized cut of a graph given by its affinity matrix.

    A branch is cut while its best ncut is below `tau`; each accepted cut recurses on its
    positive side, then on its negative side (reference `recursive_ncut`, l.71-123).
    Tokens are labelled by which accepted cuts put them on the positive side, exactly like the
    reference's `assemble_clusters` (l.125-136), so the label order matches too.

    Args:
        affinity: symmetric non-negative float tensor (N, N).
        tau: stop threshold on the ncut value, > 0 (paper: tau, 0.5).
        num_thresholds: thresholds tried per cut (reference: 100).
        drop_zero_rows: reproduce the reference: below the root, tokens whose affinity row
            holds an exact 0 are left out of every further cut.
        cuts: a memo of each token set's best cut (`bipartition`), filled here. A cut does not
            depend on `tau` (only whether it is accepted does), so passing the same dict when
            cutting the same affinity with another `tau` solves no cut twice. Give one dict
            per affinity, `num_thresholds` and `eigensolver`.
        eigensolver: "auto", "dense" or "lanczos" (`diffuseg.ops.fiedler`): how each cut's
            Fiedler vector is found. All give the same cuts up to eigensolver tolerance.

    Returns:
        int64 tensor (N,) of labels in [0, K).

    Raises:
        ValueError: if `tau` <= 0, `affinity` is not square or `eigensolver` is unknown.
    """
    if not tau > 0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    check_eigensolver(eigensolver)
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"`affinity` must be a square (N, N) matrix, got {tuple(affinity.shape)}.")
    n = affinity.shape[0]
    device = affinity.device
    has_zero = (affinity == 0).any(dim=1) if drop_zero_rows else None  # (N,)
    accepted: list[torch.Tensor] = []  # bool (N,) positive side of every accepted cut
    stack = [(torch.arange(n, device=device), 0)]  # (active token ids, level)
    while stack:
        active, level = stack.pop()
        if has_zero is not None and level > 0:
            active = active[~has_zero[active]]
        if active.numel() < 2:
            continue
        key = active.cpu().numpy().tobytes()
        if cuts is None or key not in cuts:
            sub = affinity.index_select(0, active).index_select(1, active)  # (n, n), one copy each
            cut = bipartition(sub, num_thresholds=num_thresholds, eigensolver=eigensolver)
            if cuts is not None:
                cuts[key] = cut
        else:
            cut = cuts[key]
        if cut is None or not cut[1] < tau:
            continue
        side, _ = cut
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        mask[active[side]] = True
        accepted.append(mask)
        # Depth first, positive side first (the reference's call order).
        stack.append((active[~side], level + 1))
        stack.append((active[side], level + 1))
    if not accepted:
        return torch.zeros(n, dtype=torch.long, device=device)
    # The reference code of a token is sum_i v_i [token in cut i] with v_i larger than any
    # earlier code, so codes sort like membership rows read from the last cut to the first.
    membership = torch.stack(accepted[::-1], dim=1).long()  # (N, cuts), last cut first
    _, labels = torch.unique(membership, dim=0, return_inverse=True)
    return labels.long()


def token_affinity(features: torch.Tensor, alpha: float = 10.0) -> torch.Tensor | None:
    """A feature map's token affinity (`affinity_matrix`), checked: what both of DiffCut's
    cuts (`recursive_normalized_cut`, `diffuseg.ops.kway_ncut.kway_normalized_cut`) partition.

    Args:
        features: float tensor (C, h, w), one C-dim feature per token; any device.
        alpha: the affinity exponent, > 0.

    Returns:
        float32 tensor (h*w, h*w) in [0, 1], or None when there is nothing to cut: fewer
        than 2 tokens, no channels or constant features (one segment).

    Raises:
        ValueError: on a non-positive `alpha`, a tensor that is not (C, h, w), or non-finite
            features.
    """
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}.")
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        raise ValueError(f"`features` must be a tensor of shape (C, h, w), got {getattr(features, 'shape', features)}.")
    c, h, w = features.shape
    if h * w < 2 or c == 0:
        return None
    if not bool(torch.isfinite(features).all()):
        raise ValueError("`features` contains NaN or inf.")
    return affinity_matrix(features.reshape(c, h * w), alpha)


def recursive_normalized_cut(
    features: torch.Tensor,
    tau: float = 0.5,
    alpha: float = 10.0,
    *,
    num_thresholds: int = 100,
    drop_zero_rows: bool = False,
    cuts: dict[bytes, tuple[torch.Tensor, float] | None] | None = None,
    eigensolver: str = "auto",
) -> torch.Tensor:
    """Segment a feature map by recursive normalized cut (DiffCut, Couairon et al. 2024).

    Args:
        features: float tensor (C, h, w), one C-dim feature per token; any device.
        tau: ncut stop threshold, > 0 (reference default 0.5, `eval_diffcut.py` l.182).
        alpha: affinity exponent, > 0 (reference default 10, `eval_diffcut.py` l.183).
        num_thresholds: thresholds tried per cut (reference: 100).
        drop_zero_rows: reproduce the reference's exact-zero row dropping (module docstring).
        cuts: memo of cuts (`recursive_ncut_affinity`); one dict per features, `alpha`,
            `num_thresholds` and `eigensolver`.
        eigensolver: "auto", "dense" or "lanczos" (`diffuseg.ops.fiedler`).

    Returns:
        int64 tensor (h, w) of labels in [0, K), on the features' device. Fewer than 2 tokens
        or constant features give a single segment (all zeros).

    Raises:
        ValueError: on a non-positive `tau` or `alpha`, a tensor that is not (C, h, w), or
            non-finite features, or an unknown `eigensolver`.
    """
    if not tau > 0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    check_eigensolver(eigensolver)
    affinity = token_affinity(features, alpha)  # (N, N)
    h, w = features.shape[1:]
    if affinity is None:
        return torch.zeros((h, w), dtype=torch.long, device=features.device)
    labels = recursive_ncut_affinity(
        affinity,
        tau,
        num_thresholds=num_thresholds,
        drop_zero_rows=drop_zero_rows,
        cuts=cuts,
        eigensolver=eigensolver,
    )
    return labels.reshape(h, w)


def assign_concepts(features: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """High-resolution concept assignment ("masked spatial marginal mean").

    Each segment's embedding is the mean of the L2-normalised features over it (not
    renormalised); the normalised features are bilinearly upsampled to `size`
    (align_corners=False) and every pixel takes the segment of largest dot product
    (reference `generate_masks`, l.156-170). Computed as the upsampled token scores, which
    is the same by linearity and needs K instead of C planes at the output size.

    Args:
        features: float tensor (C, h, w).
        labels: int tensor (h, w) with values in [0, K).
        size: (H, W) of the output; (128, 128) in the reference eval, the input size in the
            demo.

    Returns:
        int64 tensor (H, W), labels relabelled to 0..K'-1 in order of the original ids
        (a segment that wins no pixel disappears).

    Raises:
        ValueError: on mismatched shapes or a non-positive size.
    """
    if features.ndim != 3 or labels.shape != features.shape[1:]:
        raise ValueError(
            f"`features` (C, h, w) and `labels` (h, w) must match, got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}."
        )
    out_h, out_w = (int(s) for s in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"`size` must be positive, got {tuple(size)}.")
    c, h, w = features.shape
    feats = F.normalize(features.float(), p=2, dim=0)  # (C, h, w)
    _, ids = torch.unique(labels.reshape(-1), return_inverse=True)  # (N,) in [0, K)
    one_hot = F.one_hot(ids, num_classes=int(ids.max()) + 1).to(feats.dtype)  # (N, K)
    area = one_hot.sum(dim=0)  # (K,)
    embeddings = (feats.reshape(c, h * w) @ one_hot) / area[None, :]  # (C, K)
    # Bilinear upsampling is linear, so <up(f)(p), e_k> = up(<f, e_k>)(p): score the tokens,
    # then upsample K score maps instead of C feature maps (C = 1280 at 1024 px would be
    # 5 GB of float32).
    token_scores = torch.einsum("chw,ck->khw", feats, embeddings)  # (K, h, w)
    scores = F.interpolate(token_scores[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[
        0
    ]  # (K, H, W)
    assigned = argmax0(scores)  # (H, W)
    _, dense = torch.unique(assigned, return_inverse=True)
    return dense.reshape(out_h, out_w).long()
