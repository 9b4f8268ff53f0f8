"""Segment proposals from the image→text attention of an empty prompt (Seg4Diff's unsupervised
mode, cvlab-kaist/Seg4Diff ``seg4diff/seg4diff_model_unsup.py``).

With an empty prompt, an MM-DiT's text tokens are BOS, EOS and padding; Seg4Diff observes that
at its "semantic grounding" layer (SD3-medium layer 9) their image→text maps each cover a
coherent region. Its unsupervised segmenter:

1. takes the head- and layer-averaged image→text maps (N image tokens x T text tokens, the 77
   CLIP tokens in SD3),
2. normalises each **pixel's** row over the tokens to [0, 1] (``att2mask``: min and max over the
   token axis, + 1e-6) and raises it to ``OUTPUT_POWER`` (1.0),
3. turns each token's map into a spatial distribution (softmax over the N pixels),
4. merges the token maps greedily by symmetric KL below 0.1 (``mask_merge``; the yaml's
   ``KL_THRESHOLD: 0.035`` is overridden by ``self.kl_threshold = 0.1`` in ``__init__``),

and labels each pixel by the merged map that is largest there.
"""

from __future__ import annotations

import torch

from ..settings import SEG4DIFF_KL_THRESHOLD
from .clustering import greedy_merge

__all__ = ["SEG4DIFF_KL_THRESHOLD", "text_token_proposals"]


def text_token_proposals(
    image_to_text: torch.Tensor,
    grid: tuple[int, int],
    threshold: float = SEG4DIFF_KL_THRESHOLD,
    power: float = 1.0,
) -> torch.Tensor:
    """Merged text-token maps of one image (steps 2-4 of the module docstring).

    Args:
        image_to_text: (N, T) image→text attention, N = h * w image tokens in raster order,
            T text tokens (e.g. SD3's 77 CLIP tokens), any float dtype.
        grid: (h, w) of the image tokens.
        threshold: the symmetric-KL merge threshold, > 0.
        power: the exponent after the per-pixel normalisation, > 0.

    Returns:
        (G, h, w) float32 proposal maps (spatial distributions), G <= T.

    Raises:
        ValueError: naming `image_to_text` if it is not (h * w, T), or `power` if not > 0.
    """
    h, w = grid
    if image_to_text.ndim != 2 or image_to_text.shape[0] != h * w or image_to_text.shape[1] < 1:
        raise ValueError(f"`image_to_text` must be (h*w, T) = ({h * w}, T), got {tuple(image_to_text.shape)}.")
    if not power > 0:
        raise ValueError(f"`power` must be > 0, got {power!r}.")
    att = image_to_text.float()
    att = att - att.min(dim=1, keepdim=True).values
    att = (att / (att.max(dim=1, keepdim=True).values + 1e-6)) ** power
    maps = torch.softmax(att.T, dim=-1)  # (T, N): each token's map a distribution over pixels
    return greedy_merge(maps, threshold).reshape(-1, h, w).float()
