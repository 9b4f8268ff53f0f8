"""Robust image reading and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.imageio import ImageLoadError, load_image, preprocess


def test_modes_are_converted_to_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    for name, im in [("g.png", gray), ("a.png", rgba), ("p.png", pal), ("s.png", sixteen)]:
        im.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == (8, 8)
    assert load_image(tmp_path / "s.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (70, 80, 90)
    assert load_image(tmp_path / "a.png").getpixel((0, 0)) == (128, 0, 0)  # alpha over black


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 10, 10))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (10, 20)
    assert out.getpixel((5, 2))[0] > 200  # red now on top


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "bad.png")


def test_crop_box_and_sizes():
    img = Image.new("RGB", (100, 60))
    (x,), (meta,) = preprocess([img], size=32, mode="crop", multiple=16)
    assert x.shape == (3, 32, 32) and meta["crop_box"] == [20, 0, 80, 60] and meta["input_size"] == [60, 100]
    (x,), (meta,) = preprocess([img], size=64, mode="keep_aspect", multiple=16)
    assert x.shape == (3, 32, 64) and meta["crop_box"] == [0, 0, 100, 60]  # 38.4 rounds to 32
    (x,), _ = preprocess([img], size=32, mode="squash", multiple=16)
    assert x.shape == (3, 32, 32)
    big = Image.new("RGB", (4000, 3000))
    (x,), _ = preprocess([big], size=64, mode="keep_aspect", multiple=16)
    assert x.shape == (3, 48, 64)


def test_bad_preprocessing_input():
    img = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError, match="smaller than the model's latent grid"):
        preprocess([img], size=512, mode="crop", multiple=64, min_side=64)
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess([img], size=32, mode="stretch")
    with pytest.raises(ValueError, match="multiple"):
        preprocess([img], size=30, mode="crop", multiple=16)


def test_arrays_and_tensors_accepted():
    arr16 = np.full((16, 16, 3), 65535, np.uint16)
    t = torch.rand(3, 16, 16)
    xs, _ = preprocess([arr16, t, np.zeros((16, 16), np.float32)], size=16, mode="crop", multiple=16)
    assert torch.allclose(xs[0], torch.ones(3, 16, 16))
    assert torch.allclose(xs[1], t, atol=1 / 255)
