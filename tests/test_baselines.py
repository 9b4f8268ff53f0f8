"""Baseline methods: slic, kmeans-color, single-segment (image only, no UNet)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffuseg.backbone.features import Features
from diffuseg.methods import get_method, list_methods
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter

BASELINES = ("slic", "kmeans-color", "single-segment")


def _quadrants(side: int = 64) -> torch.Tensor:
    """(1, 3, side, side) float32 in [0, 1]: red, green, blue and black quadrants."""
    img = torch.zeros(1, 3, side, side)
    h = side // 2
    img[0, 0, :h, :h] = 1
    img[0, 1, :h, h:] = 1
    img[0, 2, h:, :h] = 1
    return img


def _quadrant_ids(labels: torch.Tensor) -> list[int]:
    h = labels.shape[0] // 2
    return [
        int(labels[a, b])
        for a, b in (
            (h // 2, h // 2),
            (h // 2, 3 * h // 2),
            (3 * h // 2, h // 2),
            (3 * h // 2, 3 * h // 2),
        )
    ]


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_conformance(name):
    spec = get_method(name)
    assert name in list_methods()
    config = spec.config_cls()
    pass_ = spec.plan(config, Query(), None)
    assert not pass_.uses_model and pass_.size is None and spec.kind == "baseline"
    assert spec.plan(config, Query(size=32, resize_mode="crop"), None).size == 32  # the caller's framing
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.anything = 3  # type: ignore[attr-defined]
    img = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    a = spec.run(Features(images=img, meta=[{}]), config, Query(), {})
    b = spec.run(Features(images=img, meta=[{}]), config, Query(), {})
    assert a.labels.shape == (40, 56) and a.labels.dtype == torch.int64
    assert int(a.labels.min()) == 0 and a.label_ids() == list(range(a.num_segments))
    assert torch.equal(a.labels, b.labels)  # deterministic
    assert a.method == name


@pytest.mark.parametrize(("name", "overrides"), [("slic", {"n_segments": 4}), ("kmeans-color", {"num_clusters": 4})])
def test_four_quadrants_give_four_segments(name, overrides):
    spec = get_method(name)
    seg = spec.run(Features(images=_quadrants(), meta=[{}]), spec.make_config(**overrides), Query(), {})
    assert seg.num_segments == 4
    assert sorted(_quadrant_ids(seg.labels)) == [0, 1, 2, 3]
    for q, lab in zip(range(4), _quadrant_ids(seg.labels), strict=True):
        rows = slice(0, 32) if q < 2 else slice(32, 64)
        cols = slice(0, 32) if q % 2 == 0 else slice(32, 64)
        assert bool((seg.labels[rows, cols] == lab).all())


def test_single_segment_is_all_zero():
    spec = get_method("single-segment")
    seg = spec.run(Features(images=_quadrants(), meta=[{}]), spec.make_config(), Query(), {})
    assert seg.num_segments == 1 and int(seg.labels.abs().sum()) == 0


def test_kmeans_seed_is_local_and_reproducible():
    spec = get_method("kmeans-color")
    img = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    cfg = spec.make_config(num_clusters=5, seed=3, max_fit_pixels=500)
    torch.manual_seed(123)
    np.random.seed(123)
    a = spec.run(Features(images=img, meta=[{}]), cfg, Query(), {})
    np.random.seed(999)
    b = spec.run(Features(images=img, meta=[{}]), cfg, Query(), {})
    assert torch.equal(a.labels, b.labels)


def test_baselines_run_through_segmenter_without_a_backbone():
    image = (_quadrants(60)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (60, 60, 3)
    seg = Segmenter(None, "slic", n_segments=4)(Query(image=image, size=32, resize_mode="crop"))
    assert seg.size == (32, 32)
    full = seg.to_input_frame()
    assert tuple(full.shape) == (60, 60)
    keep = Segmenter(None, "single-segment")(image[:, :40])  # default: the whole image, own size
    assert keep.size == (60, 40) and tuple(keep.in_input_frame().labels.shape) == (60, 40)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("slic", {"n_segments": 0}),
        ("slic", {"compactness": -1.0}),
        ("slic", {"sigma": float("inf")}),
        ("kmeans-color", {"num_clusters": 0}),
        ("kmeans-color", {"color_space": "hsv"}),
        ("kmeans-color", {"spatial_weight": -0.5}),
        ("kmeans-color", {"num_clusters": 2.5}),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(name, bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        get_method(name).make_config(**bad)
