"""Segmentation results and their files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from diffuseg.outputs import OutputExistsError, atomic_write
from diffuseg.types import Segmentation


def _seg():
    labels = torch.zeros(6, 8, dtype=torch.int64)
    labels[:, 4:] = 1
    labels[4:, :2] = 2
    return Segmentation(labels=labels, method="x", meta={"input_size": [12, 8], "crop_box": [0, 3, 8, 9]})


def test_files_round_trip(tmp_path):
    seg = _seg()
    paths = seg.save(tmp_path, "img", Image.new("RGB", (8, 6)))
    assert [p.name for p in paths] == ["img.labels.png", "img.overlay.png", "img.json"]
    png = Image.open(tmp_path / "img.labels.png")
    assert png.mode == "P" and np.array_equal(np.asarray(png), seg.labels.numpy())
    data = json.loads((tmp_path / "img.json").read_text())
    assert data["num_segments"] == 3
    for ann in data["segments"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle), (seg.labels.numpy() == ann["id"]).astype(np.uint8))
        assert ann["area"] == int((seg.labels == ann["id"]).sum())


def test_no_overwrite_and_nothing_half_written(tmp_path):
    seg = _seg()
    seg.save(tmp_path, "img")
    before = (tmp_path / "img.json").read_bytes()
    with pytest.raises(OutputExistsError):
        seg.save(tmp_path, "img")
    assert (tmp_path / "img.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    seg.save(tmp_path, "img", overwrite=True)
    with pytest.raises(OutputExistsError):
        atomic_write(tmp_path / "img.json", b"x")


def test_unsynced_saves_skip_fsync_only(tmp_path, monkeypatch):
    """`sync=False` (a web page's short-lived downloads) writes the same files, atomically,
    without waiting for the disk."""
    import os

    seg = _seg()
    synced = seg.save(tmp_path / "a", "img")
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    unsynced = seg.save(tmp_path / "b", "img", sync=False)
    assert not calls and [p.read_bytes() for p in unsynced] == [p.read_bytes() for p in synced]
    seg.save(tmp_path / "c", "img")
    assert len(calls) == len(synced)


def test_label_ids_are_the_occurring_ids():
    labels = torch.tensor([[0, 5], [5, 2]])
    assert Segmentation(labels=labels).label_ids() == [0, 2, 5]
    assert Segmentation(labels=torch.zeros(0, 3, dtype=torch.long)).label_ids() == []


def test_argmax0_is_argmax_over_dim_0():
    """First index on ties, NaN wins, any trailing shape and float dtype."""
    from diffuseg.ops.masks import argmax0

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape in [(4, 32, 48), (7, 5), (1, 3, 3), (300, 9)]:
            x = torch.randint(0, 3, shape, generator=g).to(dtype)  # many ties
            assert torch.equal(argmax0(x), x.argmax(0))
            x = torch.rand(shape, generator=g).to(dtype)
            x.view(shape[0], -1)[-1, 0] = float("nan")
            assert torch.equal(argmax0(x), x.argmax(0))


def test_input_frame_and_validation():
    seg = _seg()
    frame = seg.to_input_frame(fill=255)
    assert frame.shape == (12, 8) and (frame[:3] == 255).all() and (frame[9:] == 255).all()
    assert torch.equal(frame[3:9], seg.labels)
    with pytest.raises(ValueError, match="2-D"):
        Segmentation(labels=torch.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        Segmentation(labels=-torch.ones(2, 2, dtype=torch.long))


def _overlay_case():
    labels = torch.zeros(40, 60, dtype=torch.int64)
    labels[:, 30:] = 2  # label 1 does not occur
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    return labels, image


def test_overlay_without_names_is_unchanged():
    from diffuseg.types import palette

    labels, image = _overlay_case()
    overlay = np.asarray(Segmentation(labels=labels).to_overlay(image, alpha=0.5))
    colours = palette(4)[1:].astype(np.float32)  # the label colours skip black
    expected = (0.5 * np.asarray(image, dtype=np.float32) + 0.5 * colours[labels.numpy()]).astype(np.uint8)
    assert overlay.shape == (40, 60, 3) and np.array_equal(overlay, expected)


@pytest.mark.parametrize("size", [(40, 60), (6, 8)])
def test_overlay_legend(size):
    from diffuseg.types import palette

    h, w = size
    labels, image = _overlay_case()
    labels = torch.nn.functional.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    image = image.resize((w, h))
    plain = np.asarray(Segmentation(labels=labels).to_overlay(image))
    named = Segmentation(labels=labels, names=["sky", "cat", "crème brûlée 日本"])
    legend = np.asarray(named.to_overlay(image))
    assert legend.shape[1] > w and legend.shape[0] >= h  # a panel on the right
    assert np.array_equal(legend[:h, :w], plain)  # the overlay itself is untouched
    panel = legend[:, w:].reshape(-1, 3)
    colours = palette(4)[1:]  # the overlay colour of labels 0, 1, 2
    for k in (0, 2):  # a solid swatch per label that occurs
        assert (panel == colours[k]).all(axis=1).sum() >= 64
    assert not (panel == colours[1]).all(axis=1).any()  # no entry for the absent label
    assert (panel == 0).all(axis=1).any()  # the names are drawn in black
