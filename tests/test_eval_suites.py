"""Benchmark suites end to end on tiny fake dataset folders (each in its official layout), the
OVSS class-name files with synonyms, VOC20, and the bad inputs of ``diffuseg eval --suite``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.datasets import ArrayDataset, Sample, load_dataset, ovss_class_names, parse_class_names
from diffuseg.eval import EngineOptions, OutputOptions, ResumeMismatchError, evaluate
from diffuseg.eval.suite_report import run_suite
from diffuseg.eval.suites import SUITES, find_benchmarks
from diffuseg.types import Segmentation

H, W = 12, 16


def _pair(img_path: Path, lab_path: Path, label: np.ndarray, seed: int) -> None:
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img_path)
    Image.fromarray(label.astype(np.uint8), mode="L").save(lab_path)


def _halves(a: int, b: int) -> np.ndarray:
    """A label map whose left half is `a` and right half `b`."""
    lab = np.full((H, W), a, np.uint8)
    lab[:, W // 2 :] = b
    return lab


def _voc(root: Path) -> None:
    for year, seg, lists, labels in (
        ("VOC2012", "SegmentationClass", "Segmentation", [(0, 15), (12, 255)]),
        ("VOC2010", "SegmentationClassContext", "SegmentationContext", [(0, 30), (7, 59)]),
    ):
        base = root / "VOCdevkit" / year
        ids = [f"{year}_{i}" for i in range(len(labels))]
        for i, (sid, (a, b)) in enumerate(zip(ids, labels, strict=True)):
            _pair(base / "JPEGImages" / f"{sid}.jpg", base / seg / f"{sid}.png", _halves(a, b), i)
        (base / "ImageSets" / lists).mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / lists / "val.txt").write_text("\n".join(ids) + "\n")


def _coco(root: Path) -> None:
    ref = resources.files("diffuseg").joinpath("data", "cocostuff27", "curated_val2017_ids.txt")
    ids = ref.read_text().split()[:2]  # curated ids, so COCO-Stuff-27's curated split finds them
    for i, (sid, (a, b)) in enumerate(zip(ids, [(0, 120), (2, 255)], strict=True)):
        _pair(root / "coco/images/val2017" / f"{sid}.jpg", root / "coco/annotations/val2017" / f"{sid}.png",
              _halves(a, b), i)  # fmt: skip


def _cityscapes(root: Path) -> None:
    for i, (a, b) in enumerate([(7, 26), (8, 0)]):
        stem = f"aachen_00000{i}_000019"
        _pair(root / f"cityscapes/leftImg8bit/val/aachen/{stem}_leftImg8bit.png",
              root / f"cityscapes/gtFine/val/aachen/{stem}_gtFine_labelIds.png", _halves(a, b), i)  # fmt: skip


def _ade(root: Path) -> None:
    for i, (a, b) in enumerate([(1, 150), (0, 3)]):
        name = f"ADE_val_0000000{i + 1}"
        _pair(root / f"ADEChallengeData2016/images/validation/{name}.jpg",
              root / f"ADEChallengeData2016/annotations/validation/{name}.png", _halves(a, b), i)  # fmt: skip


def _data(root: Path, skip: tuple[str, ...] = ()) -> Path:
    for name, write in (("voc", _voc), ("coco", _coco), ("cityscapes", _cityscapes), ("ade", _ade)):
        if name not in skip:
            write(root)
    return root


# --------------------------------------------------------------------------- class-name files
def test_class_name_files_parse_synonyms_and_refuse_bad_lines(tmp_path):
    assert parse_class_names("sky, wall\nperson, person in shirt\ncat") == (
        ("sky", "wall"),
        ("person", "person in shirt"),
        ("cat",),
    )
    assert parse_class_names("a; b\nc\n") == (("a", "b"), ("c",))  # ProxyCLIP's ';' too
    with pytest.raises(ValueError, match=r"f\.txt: line 2 is empty"):
        parse_class_names("cat\n\ndog", "f.txt")
    with pytest.raises(ValueError, match=r"f\.txt: line 3 repeats the class 'Cat' of line 1"):
        parse_class_names("cat\ndog\nCat, kitty", "f.txt")
    with pytest.raises(ValueError, match="line 1 and line 2"):
        parse_class_names("a, x\nb, x", "f.txt")
    # SCLIP's COCO-Object file lists 'bed' under background and as class 60: it stays with class 60
    coco = ovss_class_names("coco_object")
    assert len(coco) == 81 and "bed" not in coco[0] and coco[60] == ("bed",) and coco[0][0] == "sky"
    for name, entries in (("voc21", 21), ("voc20", 20), ("context59", 59), ("ade20k", 150)):
        assert len(ovss_class_names(name)) == entries
    assert ovss_class_names("voc20")[19] == ("television monitor", "tv monitor", "monitor", "television", "screen")


def test_cli_class_names_flag_reports_file_and_line(tmp_path, capsys):
    _voc(tmp_path)
    bad = tmp_path / "names.txt"
    bad.write_text("cat\n\ndog\n")
    args = ["eval", "--dataset", "voc20", "--root", str(tmp_path / "VOCdevkit"), "--method", "single-segment"]
    assert main([*args, "--class-names", str(bad), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert f"{bad}: line 2 is empty" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    assert main([*args, "--class-names", str(short), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "--class-names must give the names of each of the dataset's 20 classes" in capsys.readouterr().err


def test_synonyms_reach_the_query_and_display_names_map_back_by_position(tmp_path):
    label = np.array([[0, 0, 1, 1]] * 2)
    ds = ArrayDataset("two", ["cat", "tvmonitor"], [Sample("a", Image.new("RGB", (4, 2)), label)])
    seen = []

    class Named:  # labels: the left half query class 0, the right half class 1, named as the query names them
        config = None

        def __init__(self, *a, **k):
            from diffuseg.methods.single_config import SingleSegmentConfig

            self.config = SingleSegmentConfig()

        def segment_batch(self, queries, **k):
            seen.extend(q.classes for q in queries)
            labels = torch.tensor([[0, 0, 1, 1]] * 2)
            meta = {"input_size": [2, 4], "crop_box": [0, 0, 4, 2]}
            return [Segmentation(labels=labels, names=list(q.class_names), meta=meta) for q in queries]

    names = [("cat", "kitty"), ("television", "tv", "monitor")]
    report = evaluate(ds, "single-segment", class_names=names, matching="none", output=OutputOptions(tmp_path),
                      engine=EngineOptions(segmenter_factory=Named))  # fmt: skip
    assert seen == [(("cat", "kitty"), ("television", "tv", "monitor"))]
    assert report["metrics"]["miou"] == 1.0  # "television" scored as class 1, "tvmonitor"
    resume = OutputOptions(tmp_path, resume=True)
    with pytest.raises(ResumeMismatchError, match="class_names"):
        evaluate(ds, "single-segment", class_names=[("cat",), ("tv",)], matching="none", output=resume,
                 engine=EngineOptions(segmenter_factory=Named))  # fmt: skip


# --------------------------------------------------------------------------- VOC20
def test_voc20_drops_background_and_shifts_the_objects(tmp_path):
    _voc(tmp_path)
    v20, v21 = load_dataset("voc20", tmp_path / "VOCdevkit"), load_dataset("voc21", tmp_path / "VOCdevkit")
    assert v20.class_names == v21.class_names[1:] and v20.background_class is None
    assert np.array_equal(v20[0].label, _halves(255, 14))  # background -> ignore, person 15 -> 14
    assert np.array_equal(v20[1].label, _halves(11, 255))  # dog 12 -> 11, boundary stays ignored


# --------------------------------------------------------------------------- suites
def test_ovss_suite_runs_end_to_end_and_resumes(tmp_path, capsys):
    root, out = _data(tmp_path / "data"), tmp_path / "out"
    args = ["eval", "--suite", "ovss", "--root", str(root), "--method", "single-segment", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    text = capsys.readouterr().out
    labels = [e.label for e in SUITES["ovss"]]
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in labels]
    assert [r.split(" | ")[0][2:] for r in rows] == labels  # the papers' order, every row present
    summary = json.loads((out / "suite_ovss_single-segment.json").read_text())
    mious = [r["miou"] for r in summary["rows"]]
    assert summary["average"]["over"] == labels
    assert summary["average"]["miou"] == pytest.approx(sum(mious) / 8)
    assert f"| **average** | 8 of 8 |  | {100 * summary['average']['miou']:.1f} |" in text
    assert (out / "suite_ovss_single-segment.md").read_text().startswith("# Suite ovss: single-segment")
    assert {p.name for p in out.glob("ovss_*_single-segment.jsonl")} == {
        f"ovss_{e.dataset}_single-segment.jsonl" for e in SUITES["ovss"]
    }
    header = json.loads((out / "ovss_voc21_single-segment.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"]["class_names"][0][:2] == ["sky", "wall"]  # SCLIP's names reached the run
    assert summary["rows"][0]["recorded_not_applied"]["background_threshold"] == 0.1
    # a second run refuses to replace the results; --resume continues each to the same table
    assert main([*args, "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--no-progress", "--resume"]) == 0
    again = json.loads((out / "suite_ovss_single-segment.json").read_text())
    assert [r["miou"] for r in again["rows"]] == mious


def test_missing_dataset_is_a_row_marked_missing(tmp_path, capsys):
    root = _data(tmp_path / "data", skip=("ade",))
    summary = run_suite("diffseg", root, "single-segment", output=OutputOptions(tmp_path / "o1"), limit=2)
    assert [r["status"] for r in summary["rows"]] == ["ok", "ok"]
    code = main(["eval", "--suite", "diffcut", "--root", str(root), "--method", "single-segment", "--out",
                 str(tmp_path / "o2"), "--no-progress", "--compare-published", "--limit", "2"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert f"ADE20K: skipped, not found: looked for {root / 'ADEChallengeData2016'}" in text
    assert "| ADE20K | ade150 | – | – | – | missing | 44.3 | 37.7 | 45.2 |" in text
    summary = json.loads((tmp_path / "o2" / "suite_diffcut_single-segment.json").read_text())
    assert summary["average"]["over"] == ["VOC", "Context", "COCO-Object", "COCO-Stuff-27", "Cityscapes-27"]
    assert "Average: mean mIoU over VOC, Context, COCO-Object, COCO-Stuff-27, Cityscapes-27 (5 of 6" in text
    assert summary["rows"][0]["matching"] == "diffcut-background" and summary["rows"][0]["protocol"] == "diffcut"
    # DiffCut's published row over the same five benchmarks
    assert f"| {(65.2 + 56.5 + 34.1 + 49.1 + 30.6) / 5:.1f} |" in text


def test_bad_suite_inputs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["eval", "--method", "single-segment", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--suite", "ovss", "--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "holds none of the ovss suite's datasets" in err and str(empty / "VOCdevkit") in err
    assert str(empty / "ADEChallengeData2016") in err and str(empty / "coco") in err
    assert main([*base, "--suite", "nope", "--root", str(empty)]) == 2
    assert "invalid choice: 'nope' (choose from 'diffcut', 'diffseg', 'ovss')" in capsys.readouterr().err
    assert main([*base, "--suite", "ovss", "--root", str(empty), "--dataset", "voc21", "--protocol", "full"]) == 2
    assert "sets --dataset, --protocol per benchmark itself" in capsys.readouterr().err
    assert main([*base, "--compare-published"]) == 2
    assert "--compare-published goes with --suite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown `suite` 'nope'"):
        find_benchmarks("nope", empty)


def test_resuming_with_another_protocol_is_refused_naming_both(tmp_path):
    _voc(tmp_path)
    ds = load_dataset("voc21", tmp_path / "VOCdevkit")
    evaluate(ds, "single-segment", protocol="diffseg", output=OutputOptions(tmp_path, name="run"))
    with pytest.raises(ResumeMismatchError, match="protocol 'diffseg' in the file, 'full' in this run"):
        evaluate(ds, "single-segment", protocol="full", output=OutputOptions(tmp_path, name="run", resume=True))


def test_ovss_entries_apply_the_papers_sizes_rounded_for_a_diffusion_model():
    from diffuseg.eval.suites import SUITES, entry_settings, ovss_protocol
    from diffuseg.settings import SlidingWindow

    proto = ovss_protocol(336, 224, 112)
    assert (proto.resize_mode, proto.model_size, proto.window) == ("short_side", 384, SlidingWindow(256, 128))
    assert ovss_protocol(448, 448, 224).model_size == 448 and ovss_protocol(560, 224, 112).model_size == 576
    city = next(e for e in SUITES["ovss"] if e.dataset == "cityscapes19")
    assert city.protocol.model_size == 576 and city.short_side == 560  # the paper's value stays recorded
    # open-vocabulary methods with class score maps get the window; the others the whole input
    assert entry_settings("ovss", city, "diffsegmenter")["protocol"].window == SlidingWindow(256, 128)
    plain = entry_settings("ovss", city, "diffseg")["protocol"]
    assert plain.window is None and plain.model_size == 576
