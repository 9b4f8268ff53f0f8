"""MaskDiffusion through the CLI: both variants, their flags and their bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main


def _segment(tiny_model_dir, *args):
    return main(["segment", "--model", str(tiny_model_dir), "--size", "32", "--no-progress", "--seed", "0", *args])


def test_open_vocabulary_and_kmeans_variants(tiny_model_dir, tmp_path, photo):
    out = tmp_path / "a"
    assert _segment(tiny_model_dir, photo, "--method", "maskdiffusion", "--classes", "a,b,c", "--template", "{class}",
                    "--out", str(out)) == 0  # fmt: skip
    doc = json.loads((out / "photo.json").read_text())
    assert doc["names"] == ["a", "b", "c"] and np.asarray(Image.open(out / "photo.labels.png")).shape == (32, 48)
    out = tmp_path / "b"
    assert _segment(tiny_model_dir, photo, "--method", "maskdiffusion-kmeans", "--k", "3", "--out", str(out)) == 0
    doc = json.loads((out / "photo.json").read_text())
    assert doc["meta"]["k"] == 3 and doc["names"] is None and 1 <= doc["num_segments"] <= 3


SHORT = ["--template", "{class}"]  # the tiny tokenizer spells letters: a short prompt


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--method", "maskdiffusion-kmeans", "--k", "1"], 2, "--k must be an int >= 2"),
        (["--method", "maskdiffusion-kmeans", "--k", "100000"], 1, "exceeds"),
        (["--method", "maskdiffusion-kmeans", "--classes", "a,b"], 2, "--classes apply to open-vocabulary"),
        (["--method", "maskdiffusion", "--classes", "!!", *SHORT], 2, "no letter or digit"),
        (["--method", "maskdiffusion", "--classes", "abcdef,ghijkl,mnopq", *SHORT], 2, "of the 3 classes fit"),
    ],
)
def test_bad_input(tiny_model_dir, tmp_path, photo, capsys, args, code, message):
    assert _segment(tiny_model_dir, photo, *args, "--out", str(tmp_path / "o")) == code
    assert message in capsys.readouterr().err
