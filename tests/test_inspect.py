"""`diffuseg inspect`: DiffCut feature similarity and DiffSeg attention pictures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.commands.inspect import parse_point
from diffuseg.inspection import feature_similarity, render


def test_feature_similarity_known_answer():
    feats = torch.zeros(2, 2, 3)
    feats[0, 0, :] = 1.0  # row 0 points along channel 0
    feats[1, 1, :] = 1.0  # row 1 along channel 1
    sim = feature_similarity(feats, (0, 2))
    assert torch.allclose(sim, torch.tensor([[1.0, 1, 1], [0, 0, 0]]))


def test_parse_point():
    assert parse_point("3, 7") == (3, 7)
    for bad in ("3", "a,b", "-1,2", "1,2,3"):
        with pytest.raises(ValueError, match="point"):
            parse_point(bad)


def test_render_puts_map_next_to_image():
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    pic = render(img, torch.rand(4, 5), (0.5, 0.5))
    assert pic.size == (80, 30)


@pytest.mark.parametrize("method", ["diffcut", "diffseg"])
def test_inspect_cli_writes_picture(method, tiny_model_dir, quadrant_image, tmp_path):
    image = tmp_path / "quad.png"
    quadrant_image.save(image)  # 64x64
    out = tmp_path / f"{method}.png"
    argv = [
        "inspect",
        str(image),
        "--point",
        "10,50",
        "--method",
        method,
        "--model",
        str(tiny_model_dir),
        "--size",
        "32",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    pic = Image.open(out)
    assert pic.size == (64, 32)  # model view (32x32) + map
    assert main(argv) == 2  # exists, no --overwrite
    assert main([*argv, "--overwrite"]) == 0


def test_inspect_cli_errors(tiny_model_dir, quadrant_image, tmp_path, capsys):
    image = tmp_path / "quad.png"
    quadrant_image.save(image)
    base = ["inspect", str(image), "--model", str(tiny_model_dir), "--size", "32", "--out", str(tmp_path / "x.png")]
    assert main([*base, "--point", "99,1"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main([*base, "--point", "nope"]) == 2
    assert "point" in capsys.readouterr().err
