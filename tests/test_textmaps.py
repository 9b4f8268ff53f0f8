"""Seg4Diff's text-token proposals against a port of its reference code on the same inputs."""

from __future__ import annotations

import pytest
import torch

from diffuseg.ops.clustering import greedy_merge
from diffuseg.ops.textmaps import text_token_proposals


def _reference(i2t: torch.Tensor, h: int, w: int, threshold: float, p: float) -> torch.Tensor:
    """cvlab-kaist/Seg4Diff seg4diff_model_unsup.py: att2mask (l.431-436) then mask_merge
    (l.455-504), on one image: (h*w, T) -> (M, h, w)."""
    att = i2t[None]  # (1, HW, T): the reference's slices_i2t after the layer mean
    att = att - att.min(dim=2, keepdim=True)[0]
    att = att / (att.max(dim=2, keepdim=True)[0] + 1e-6)
    att = (att**p)[0].T.reshape(-1, h, w)  # "b (h w) l -> b l h w", squeeze(0)
    n = att.shape[0]
    probs = torch.softmax(att.reshape(n, -1), dim=-1).view_as(att)
    matched, out = set(), []
    for i in range(n):
        if i in matched:
            continue
        matched.add(i)
        x, y = probs[i].expand(n, -1, -1), probs
        q = torch.log(x) - torch.log(y)
        kl = torch.sum(x * q, dim=(-2, -1)) / 2 - torch.sum(y * q, dim=(-2, -1)) / 2
        mask = kl < threshold
        matched.update(torch.nonzero(mask).flatten().tolist())
        out.append(probs[mask].mean(0))
    return torch.stack(out)


@pytest.mark.parametrize(("threshold", "power"), [(0.1, 1.0), (0.02, 2.0), (1.0, 1.0)])
def test_proposals_equal_the_reference_on_random_maps(threshold, power):
    g = torch.Generator().manual_seed(0)
    h, w, t = 6, 5, 12
    base = torch.rand(3, h * w, generator=g)  # three underlying regions; tokens are noisy copies
    i2t = torch.stack([base[k % 3] + 0.05 * torch.rand(h * w, generator=g) for k in range(t)], 1).double()
    ours = text_token_proposals(i2t, (h, w), threshold, power)
    ref = _reference(i2t, h, w, threshold, power)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref.float(), atol=1e-6)


def test_identical_token_maps_merge_into_one_and_distinct_ones_stay():
    h, w = 4, 4
    a, b = torch.zeros(h * w), torch.zeros(h * w)
    a[:8], b[8:] = 1.0, 1.0
    i2t = torch.stack([a, a, b, a, b], 1) + 0.01  # tokens 0, 1, 3 alike; 2, 4 alike
    proposals = text_token_proposals(i2t, (h, w), threshold=0.1)
    assert proposals.shape == (2, h, w)
    assert torch.allclose(proposals.sum((1, 2)), torch.ones(2))  # spatial distributions
    assert proposals[0].flatten()[:8].min() > proposals[0].flatten()[8:].max()  # the first region first


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="`image_to_text` must be"):
        text_token_proposals(torch.rand(10, 3), (4, 4))
    with pytest.raises(ValueError, match="`power`"):
        text_token_proposals(torch.rand(16, 3), (4, 4), power=0)
    with pytest.raises(ValueError, match="`threshold`"):
        greedy_merge(torch.softmax(torch.rand(3, 5), -1), 0)
