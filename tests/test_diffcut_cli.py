"""`diffuseg segment --method diffcut` end to end on a tiny SDXL-shaped model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tiny_sdxl_components, tmp_path_factory):
    """Two text encoders + `text_time` UNet saved as a diffusers folder."""
    from diffusers import StableDiffusionXLPipeline

    d = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**tiny_sdxl_components).save_pretrained(d, safe_serialization=True)
    return d


def test_segment_diffcut_end_to_end(tiny_sdxl_dir, quadrant_image, tmp_path):
    image = tmp_path / "quad.png"
    quadrant_image.save(image)
    out = tmp_path / "out"
    argv = [
        "segment",
        str(image),
        "--method",
        "diffcut",
        "--model",
        str(tiny_sdxl_dir),
        "--size",
        "64",
        "--tau",
        "0.9",
        "--alpha",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    labels = np.asarray(Image.open(out / "quad.labels.png"))
    assert labels.shape == (64, 64)
    meta = json.loads((out / "quad.json").read_text())
    assert meta["method"] == "diffcut"
    assert meta["config"]["tau"] == 0.9 and meta["config"]["alpha"] == 2.0
    assert meta["config"]["refine"] is True
    # Same seed, no refinement: another run works and differs only by the flag.
    assert main([*argv[:-3], "--no-refine", "--out", str(tmp_path / "raw"), "--no-progress"]) == 0
    raw = json.loads((tmp_path / "raw" / "quad.json").read_text())
    assert raw["config"]["refine"] is False


def test_segment_diffcut_bad_tau_is_usage_error(tiny_sdxl_dir, quadrant_image, tmp_path, capsys):
    image = tmp_path / "quad.png"
    quadrant_image.save(image)
    code = main(
        [
            "segment",
            str(image),
            "--method",
            "diffcut",
            "--model",
            str(tiny_sdxl_dir),
            "--tau",
            "0",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "tau" in capsys.readouterr().err


def _tiny_voc(root, n=2):
    """`n` 48x64 VOC-layout images of coloured blocks labelled with the blocks' classes."""
    rng = np.random.default_rng(0)
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"im{i}" for i in range(n)]
    for i in ids:
        lab = np.zeros((48, 64), np.uint8)
        img = np.full((48, 64, 3), 30, np.uint8)
        for c in (3, 9):
            y, x = int(rng.integers(0, 24)), int(rng.integers(0, 40))
            lab[y : y + 20, x : x + 20] = c
            img[y : y + 20, x : x + 20] = rng.integers(60, 255, 3)
        Image.fromarray(img).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        Image.fromarray(lab, mode="L").save(base / "SegmentationClass" / f"{i}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def test_diffcut_under_the_diffcut_eval_protocol(tiny_sdxl_backbone, tmp_path):
    """The reference protocol (square crop side - 1, many-to-one background), shrunk to a tiny
    model: input 64 instead of 1024, scored and assigned at 16 instead of 128."""
    from diffuseg.datasets import load_dataset
    from diffuseg.eval import OutputOptions, evaluate
    from diffuseg.eval.protocols import Protocol

    protocol = Protocol(
        "diffcut-tiny", crop="square-minus-one", input_size=64, label_nearest="exact", score_size=16, resize_mode="crop"
    )
    seen = []
    extract = tiny_sdxl_backbone.extract

    def spy(pixels, *args, **kwargs):
        seen.append(tuple(pixels.shape[-2:]))
        return extract(pixels, *args, **kwargs)

    tiny_sdxl_backbone.extract = spy
    report = evaluate(
        load_dataset("voc21", _tiny_voc(tmp_path)),
        "diffcut",
        backbone=tiny_sdxl_backbone,
        model_id="tiny-sdxl",
        protocol=protocol,
        matching="diffcut-background",
        background_class=0,
        config_overrides={"assignment_size": 16, "tau": 0.9, "alpha": 2.0},
        output=OutputOptions(tmp_path / "r"),
    )
    assert report["dataset"]["num_evaluated"] == 2
    assert seen == [(64, 64)] * 2  # the protocol fixes the model input (through the Query), not the config
    assert report["method"]["config"]["image_size"] == 1024 and report["protocol"]["input_size"] == 64
    assert 0.0 <= report["metrics"]["miou"] <= 1.0
