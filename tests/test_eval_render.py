"""``diffuseg eval --render-only``: a run's report rebuilt from its stored counts, no model, nothing scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffuseg.cli import main
from diffuseg.eval import OutputOptions, compare_reports, load_dataset, render_report, to_markdown
from diffuseg.eval.metrics import MetricAccumulator, contingency
from diffuseg.eval.runner import progress_postfix

STEM = "synthetic-val_kmeans-color_full"
NEW_KEYS = ("macc", "fwiou", "aacc", "acc", "acc_by_class")


def _base(out: Path) -> list[str]:
    return ["eval", "--dataset", "synthetic", "--method", "kmeans-color", "--limit", "3", "--out", str(out)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One finished run of a method that needs no model (colour k-means, 3 synthetic scenes)."""
    out = tmp_path_factory.mktemp("render")
    assert main([*_base(out), "--no-progress"]) == 0
    return out


def _stable(report: dict) -> dict:
    """The report without the time it was written."""
    return {**report, "run": {k: v for k, v in report["run"].items() if k != "created"}}


def _forbid_scoring(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("--render-only must not segment or load anything")

    monkeypatch.setattr("diffuseg.eval.units.score_unit", refuse)
    monkeypatch.setattr("diffuseg.eval.runner.score_unit", refuse)
    monkeypatch.setattr("diffuseg.segmenter.Segmenter.__init__", refuse)
    monkeypatch.setattr("diffuseg.commands._options.load_backbone", refuse)


def test_render_rewrites_a_deleted_report_identically(run_dir, monkeypatch, capsys):
    json_path, md_path, jsonl = (run_dir / f"{STEM}{ext}" for ext in (".json", ".md", ".jsonl"))
    before, md_before, records = json.loads(json_path.read_text()), md_path.read_text(), jsonl.read_bytes()
    assert all(k in before["metrics"] for k in NEW_KEYS)
    json_path.unlink()
    md_path.unlink()
    _forbid_scoring(monkeypatch)
    capsys.readouterr()
    assert main([*_base(run_dir), "--render-only"]) == 0
    out = capsys.readouterr().out
    assert "mAcc" in out and "fwIoU" in out and "aAcc" in out
    assert _stable(json.loads(json_path.read_text())) == _stable(before)
    assert md_path.read_text() == md_before
    assert jsonl.read_bytes() == records  # the results file is only read


def test_an_old_report_gains_the_new_metrics(run_dir, tmp_path):
    json_path = run_dir / f"{STEM}.json"
    fresh = json.loads(json_path.read_text())
    old = json.loads(json_path.read_text())  # as reports were written before mAcc / fwIoU / aAcc
    for k in NEW_KEYS:
        old["metrics"].pop(k)
    old["other_matchings"] = {
        m: {"miou": v["miou"], "pixel_accuracy": v["pixel_accuracy"]} for m, v in old["other_matchings"].items()
    }
    json_path.write_text(json.dumps(old))
    # an old report still renders and compares: "-" where it has no value, aAcc from pixel_accuracy
    md = to_markdown(old)
    assert f"| {100 * fresh['metrics']['miou']:.1f} | - | - | {100 * fresh['metrics']['aacc']:.1f} |" in md
    table = compare_reports([old, fresh], ["old/r.json", "new/r.json"])
    assert table.count(f"| {100 * fresh['metrics']['aacc']:.1f} |") == 2
    assert main([*_base(run_dir), "--render-only", "--no-progress"]) == 0
    again = json.loads(json_path.read_text())
    assert all(k in again["metrics"] for k in NEW_KEYS)
    assert again["metrics"]["macc"] == pytest.approx(fresh["metrics"]["macc"])
    assert _stable(again) == _stable(fresh)


def test_render_with_another_matching_heads_with_it(run_dir, tmp_path):
    fresh = json.loads((run_dir / f"{STEM}.json").read_text())
    ds = load_dataset("synthetic", None)
    out = OutputOptions(run_dir, name=STEM)
    report = render_report(ds, "kmeans-color", limit=3, matching="hungarian-dataset", output=out)
    assert report["matching"] == "hungarian-dataset"
    other = fresh["other_matchings"]["hungarian-dataset"]
    assert {k: report["metrics"][k] for k in other} == other
    assert report["other_matchings"]["hungarian-per-image"]["miou"] == fresh["metrics"]["miou"]
    render_report(ds, "kmeans-color", limit=3, output=out)  # back to the run's own matching


def test_render_without_results_names_the_file_and_exits_2(tmp_path, capsys):
    assert main([*_base(tmp_path / "empty"), "--render-only"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty" / f"{STEM}.jsonl") in err and "does not exist" in err
    assert not (tmp_path / "empty" / f"{STEM}.json").exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--classes", "gt-labels"], "['classes']"),
        (["--num-clusters", "9"], "config.num_clusters"),
        (["--resume"], "--render-only scores nothing"),
    ],
)
def test_render_refuses_settings_the_run_did_not_have(run_dir, capsys, flags, says):
    before = (run_dir / f"{STEM}.json").read_bytes()
    assert main([*_base(run_dir), "--render-only", *flags]) == 2
    assert says in capsys.readouterr().err
    assert (run_dir / f"{STEM}.json").read_bytes() == before


def test_render_reads_a_torn_last_line_without_cutting_it(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    torn = (run_dir / f"{STEM}.jsonl").read_bytes() + b'{"type":"image","ind'
    (copy / f"{STEM}.jsonl").write_bytes(torn)
    report = render_report(load_dataset("synthetic", None), "kmeans-color", limit=3, output=OutputOptions(copy))
    assert report["dataset"]["num_evaluated"] == 3
    assert (copy / f"{STEM}.jsonl").read_bytes() == torn


def test_progress_postfix_shows_miou_macc_aacc():
    acc = MetricAccumulator(2, "none")
    assert progress_postfix(acc.result()) == "mIoU - mAcc - aAcc -"
    acc.add(contingency(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]]), 2))
    # IoU 2/3, 1/2; Acc 2/3, 1; aAcc 3/4
    assert progress_postfix(acc.result()) == "mIoU 58.3 mAcc 83.3 aAcc 75.0"


def test_render_without_limit_keeps_the_runs_own_limit(run_dir, monkeypatch):
    """The run scored 3 of the split's scenes with --limit 3; rendering without --limit reads
    that from the run's last report instead of saying every scene was requested."""
    json_path = run_dir / f"{STEM}.json"
    before = json.loads(json_path.read_text())
    assert before["dataset"]["num_requested"] == 3 < before["dataset"]["num_samples"]
    _forbid_scoring(monkeypatch)
    base = [a for a in _base(run_dir) if a not in ("--limit", "3")]
    assert main([*base, "--render-only"]) == 0
    after = json.loads(json_path.read_text())
    assert after["dataset"]["num_requested"] == 3
    assert _stable(after) == _stable(before)
