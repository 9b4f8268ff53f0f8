"""Seg4Diff's unsupervised method: known answers on hand-built features, the layer choice and
its errors (its MM-DiT runs are in tests/test_mmdit_backbone.py)."""

from __future__ import annotations

import types

import pytest
import torch

from diffuseg.backbone.features import Features
from diffuseg.backbone.protocol import AttentionLayer, LayerMap
from diffuseg.methods.seg4diff import Seg4DiffConfig, plan, segment, text_layer
from diffuseg.plan import Query


def _features(maps: torch.Tensor, grid: tuple[int, int], first: int) -> Features:
    return Features(
        cross_attention={"layer": maps[None]},
        layer_sizes={"layer": grid},
        images=torch.zeros(1, 3, grid[0] * 4, grid[1] * 4),
        token_ids=torch.zeros(1, first, dtype=torch.long),
    )


def test_two_regions_of_text_token_maps_give_two_segments():
    h, w = 4, 6
    left = torch.zeros(h, w)
    left[:, :3] = 1.0
    regions = [left.flatten(), (1 - left).flatten()]
    # 6 CLIP tokens (3 per region, slightly different) and 4 T5 tokens that would blur both
    clip = torch.stack([regions[k % 2] + 0.02 * k for k in range(6)], 1)
    t5 = torch.full((h * w, 4), 0.5)
    seg = segment(_features(torch.cat([clip, t5], 1) * 0.1, (h, w), first=6), Seg4DiffConfig())
    labels = seg.labels
    assert labels.shape == (h * 4, w * 4) and seg.num_segments == 2
    assert (labels[:, : w * 2] == labels[0, 0]).all() and (labels[:, w * 2 :] != labels[0, 0]).all()


def test_the_layer_is_counted_among_image_to_text_layers():
    layer_map = LayerMap(
        (
            AttentionLayer("a", "image"),
            AttentionLayer("a", "text"),
            AttentionLayer("b", "image"),  # no text: not counted
            AttentionLayer("c", "text"),
            AttentionLayer("d", "text"),
        )
    )
    backbone = types.SimpleNamespace(layer_map=layer_map)
    assert [text_layer(i, backbone) for i in (0, 1, 2)] == ["a", "c", "d"]
    assert text_layer(None, backbone) == "c"  # the middle one
    with pytest.raises(ValueError, match=r"`layer` 3 is outside this model's image->text layers 0..2"):
        text_layer(3, backbone)
    pass_ = plan(Seg4DiffConfig(layer=2), Query(), backbone)
    assert pass_.request.cross_attention == ("d",) and pass_.prompts == ("",) and pass_.add_noise


def test_bad_settings_and_features_are_named():
    with pytest.raises(ValueError, match="`layer`"):
        Seg4DiffConfig(layer=-1)
    with pytest.raises(ValueError, match="`kl_threshold`"):
        Seg4DiffConfig(kl_threshold=0)
    with pytest.raises(ValueError, match="one image's image->text maps of one layer"):
        segment(Features(images=torch.zeros(1, 3, 8, 8)), Seg4DiffConfig())
