"""MaskDiffusion's pieces as pure functions: soft class masks from unnormalised cross-attention,
class prototypes in a feature space, and the per-pixel feature stack.

Kawano & Aoki, "MaskDiffusion: Exploiting Pre-trained Diffusion Models for Semantic
Segmentation" (arXiv 2403.11194); reference Valkyrja3607/MaskDiffusion@1955c87
(``scripts/run.py`` l.56-66 `generate_semseg_from_feat_atten`, ``scripts/atten.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["prototype_scores", "unnormalised_class_maps", "feature_stack"]


def prototype_scores(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Scores of every pixel against attention-weighted class prototypes.

    ``p_c = sum_x f(x) a_c(x) / sum_x a_c(x)`` (the prototype is not re-normalised, as the
    reference), then ``S_c(x) = <f(x), p_c>``.

    Args:
        features: (C, H, W) float features (the caller L2-normalises them per pixel).
        attention: (K, H, W) float class masks >= 0 on the same grid.

    Returns:
        (K, H, W) float32 scores. A class whose mask is zero everywhere has a zero prototype
        and scores 0 everywhere.

    Raises:
        ValueError: on shapes that do not match, negative or non-finite attention.
    """
    if features.ndim != 3 or attention.ndim != 3 or features.shape[-2:] != attention.shape[-2:]:
        raise ValueError(
            f"`features` must be (C, H, W) and `attention` (K, H, W) on the same grid, got "
            f"{tuple(features.shape)} and {tuple(attention.shape)}."
        )
    a = attention.float().flatten(1)  # (K, N)
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ValueError("`attention` must be finite and >= 0.")
    f = features.float().flatten(1)  # (C, N)
    mass = a.sum(1, keepdim=True)  # (K, 1)
    prototypes = (a @ f.T) / mass.clamp_min(torch.finfo(torch.float32).tiny)  # (K, C)
    prototypes = torch.where(mass > 0, prototypes, torch.zeros_like(prototypes))
    return (prototypes @ f).reshape(attention.shape)


def unnormalised_class_maps(
    log_maps: Mapping[tuple[int, int], torch.Tensor],
    counts: Mapping[tuple[int, int], int],
    spans: Sequence[Sequence[int]],
    grid: tuple[int, int],
) -> torch.Tensor:
    """Each class's unnormalised cross-attention on a common grid, max-normalised to [0, 1].

    The reference (``atten.py`` l.135-153, 483) resizes each layer's head-mean exp(QK^T/sqrt d)
    bilinearly to a common grid, averages over layers and divides each class map by its maximum.
    Here the maps arrive as logs (`FeatureRequest(normalization="log")`) and are exponentiated
    only after subtracting each class's largest log value over every layer and pixel: a factor
    exp(-m_c) common to all of that class's values, which the final division by the maximum
    cancels exactly. The largest term is then exp(0) = 1, so float32 cannot overflow, and only
    values below 1e-38 of the class maximum (invisible after the normalisation) underflow.

    Args:
        log_maps: token grid (h, w) -> (h*w, T) log unnormalised attention, the mean of that
            grid's layers (`Features.by_resolution("cross")` of one row).
        counts: grid -> number of layers averaged into it (each layer weighs the same).
        spans: per class, the token positions of its name (a multi-token name: the mean of its
            tokens' maps).
        grid: (H, W) of the common grid.

    Returns:
        (K, H, W) float32 in [0, 1], each class's maximum 1.

    Raises:
        ValueError: on empty inputs or a span without positions.
    """
    if not log_maps or not spans:
        raise ValueError("`log_maps` and `spans` must not be empty.")
    if any(not pos for pos in spans):
        raise ValueError("every class needs at least one token position in `spans`.")
    total = sum(counts[g] for g in log_maps)
    out = []
    for positions in spans:
        idx = list(positions)
        peak = max(float(m[:, idx].max()) for m in log_maps.values())
        acc = None
        for (h, w), m in log_maps.items():
            a = (m[:, idx].float() - peak).exp().mean(-1).reshape(1, 1, h, w)  # in (0, 1]
            up = F.interpolate(a, size=grid, mode="bilinear", align_corners=False)[0, 0]
            term = up * (counts[(h, w)] / total)
            acc = term if acc is None else acc + term
        out.append(acc / acc.max().clamp_min(torch.finfo(torch.float32).tiny))
    return torch.stack(out)


def feature_stack(maps: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Per-pixel features from several layers: each (C_i, h_i, w_i) map L2-normalised over its
    channels, resized bilinearly to `grid`, concatenated, and L2-normalised again (the
    reference L2-normalises the concatenated features, ``run.py`` l.58).

    Returns:
        (sum C_i, H, W) float32, unit norm per pixel.
    """
    if not maps:
        raise ValueError("`maps` must hold at least one feature map.")
    parts = []
    for m in maps:
        m = F.normalize(m.float(), dim=0)
        if tuple(m.shape[-2:]) != tuple(grid):
            m = F.interpolate(m[None], size=grid, mode="bilinear", align_corners=False)[0]
        parts.append(m)
    return F.normalize(torch.cat(parts), dim=0)
