"""Tests for diffuseg.ops.pamr (PAMR) and diffuseg.ops.median.median_filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from diffuseg.ops.median import median_filter
from diffuseg.ops.pamr import pamr, pamr_affinity, propagate, refine_labels

_ORDER8 = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
_ORDER9 = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]


def _conv_shift(x, dilations, positions, centre_minus):
    """Independent oracle: neighbours by dilated 3x3 convolutions on replicate padding."""
    b, k, h, w = x.shape
    weight = torch.zeros(len(positions), 1, 3, 3, dtype=x.dtype)
    for i, (r, c) in enumerate(positions):
        weight[i, 0, r, c] = -1.0 if centre_minus else 1.0
        if centre_minus:
            weight[i, 0, 1, 1] = 1.0
    flat = x.reshape(b * k, 1, h, w)
    outs = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), weight, dilation=d) for d in dilations]
    return torch.cat(outs, 1).reshape(b, k, -1, h, w)


def _oracle(image, masks, num_iter, dilations):
    std = _conv_shift(image, dilations, _ORDER9, False).std(2, keepdim=True)
    aff = -_conv_shift(image, dilations, _ORDER8, True).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(num_iter):
        masks = (_conv_shift(masks, dilations, _ORDER8, False) * aff).sum(2)
    return masks


def test_pamr_matches_convolution_oracle():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 23, 31, generator=g)
    masks = torch.rand(2, 4, 23, 31, generator=g)
    for iters, dil in [(3, (1, 2, 4, 8)), (2, (1,)), (0, (1, 3))]:
        expected = _oracle(image, masks, iters, dil)
        assert torch.allclose(pamr(image, masks, iters, dil), expected, atol=1e-5)


def test_pamr_keeps_dtype_and_mass():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    masks = F.one_hot(torch.randint(0, 3, (16, 16), generator=g), 3).permute(2, 0, 1)[None]
    out = pamr(image, masks.double(), 5)
    assert out.dtype == torch.float64 and out.shape == (1, 3, 16, 16)
    # Softmax weights sum to one: one-hot masks stay a partition of unity.
    assert torch.allclose(out.sum(1), torch.ones(1, 16, 16, dtype=torch.float64))


def test_pamr_resizes_masks_to_image():
    out = pamr(torch.rand(1, 3, 20, 20), torch.rand(1, 2, 5, 5), 1)
    assert out.shape == (1, 2, 20, 20)


def test_refine_labels_snaps_boundary_to_image_edge():
    # Image: left half dark, right half bright. Labels: boundary misplaced by 2 columns.
    image = torch.zeros(3, 24, 24)
    image[:, :, 12:] = 1.0
    image += 0.01 * torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(24, 24, dtype=torch.long)
    labels[:, 10:] = 1
    refined = refine_labels(image, labels, num_iter=10, dilations=(1, 2, 4, 8))
    assert refined.dtype == torch.int64 and refined.shape == (24, 24)
    assert (refined[:, 13:] == 1).all()
    assert (refined[:, :8] == 0).all()


def test_refine_labels_single_label_and_relabel():
    image = torch.rand(3, 10, 10)
    assert (refine_labels(image, torch.full((10, 10), 7)) == 0).all()


@pytest.mark.parametrize("size", [3, 5])
def test_median_filter_matches_scipy(size):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (17, 23), generator=g)
    expected = ndimage.median_filter(labels.numpy(), size)
    assert np.array_equal(median_filter(labels, size).numpy(), expected)
    # The reference filters a (1, H, W) array with size 3: same answer.
    if size == 3:
        expected_3d = ndimage.median_filter(labels.numpy()[None], 3)[0]
        assert np.array_equal(median_filter(labels, 3).numpy(), expected_3d)


def test_a_computed_affinity_gives_the_same_refinement():
    """The image affinity is computed once per image and reused (`affinity=`)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 24, 20, generator=g)
    affinity = pamr_affinity(image[None], (1, 2))
    assert affinity.weights.shape == (1, 1, 16, 24, 20) and len(affinity.offsets) == 16
    torch.testing.assert_close(affinity.weights.sum(2), torch.ones(1, 1, 24, 20))
    for labels in (torch.randint(0, 3, (24, 20), generator=g), torch.randint(0, 5, (6, 5), generator=g)):
        plain = refine_labels(image, labels, num_iter=4, dilations=(1, 2))
        assert torch.equal(refine_labels(image, labels, num_iter=4, dilations=(1, 2), affinity=affinity), plain)
    with pytest.raises(ValueError, match="masks"):
        propagate(torch.rand(1, 2, 12, 10), affinity)
    with pytest.raises(ValueError, match="num_iter"):
        propagate(torch.rand(1, 2, 24, 20), affinity, -1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size"):
        median_filter(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="dilations"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), 1, ())
    with pytest.raises(ValueError, match="num_iter"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), -1)
    with pytest.raises(ValueError, match="image"):
        pamr(torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4), 1)


def test_quadrants_through_cut_assignment_and_refinement():
    """Four colour quadrants: 4 token segments, then exact quadrants at full resolution except
    at most the 4-way junction, where a median of label *ids* may pick a foreign id (the
    reference filters label ids with scipy's median filter too)."""
    from diffuseg.ops.ncut import assign_concepts, recursive_normalized_cut

    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3))
    img[:32, :32] = (220, 30, 30)
    img[:32, 32:] = (30, 200, 40)
    img[32:, :32] = (30, 40, 210)
    img[32:, 32:] = (230, 220, 40)
    img += rng.normal(0, 4, img.shape)
    image = torch.from_numpy(img.clip(0, 255) / 255).float().permute(2, 0, 1)  # (3, 64, 64)
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[:32, 32:], truth[32:, :32], truth[32:, 32:] = 1, 2, 3
    feats = F.avg_pool2d(image[None], 8)[0]  # (3, 8, 8) colour per 8x8 patch
    feats = feats - feats.mean(dim=(1, 2), keepdim=True)
    tokens = recursive_normalized_cut(feats)
    centres = truth[4::8, 4::8]  # the quadrant of every 8x8 patch
    pairs = set(zip(tokens.flatten().tolist(), centres.flatten().tolist(), strict=True))
    assert len(pairs) == 4 and tokens.unique().numel() == 4  # exactly the quadrants
    labels = refine_labels(image, assign_concepts(feats, tokens, (64, 64)))
    # Map every predicted id to the quadrant it mostly covers; count the rest.
    wrong = 0
    for k in labels.unique().tolist():
        covered = truth[labels == k]
        wrong += int((covered != covered.mode().values).sum())
    assert wrong <= 2
    assert labels.unique().numel() == 4
