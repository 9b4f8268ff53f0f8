"""`diffuseg segment` / `env` end to end, in-process, on a tiny model saved to a temp dir."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(48, 40), (64, 64)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_segment_writes_three_files_per_image(tiny_model_dir, photos, tmp_path):
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            *photos,
            "--model",
            str(tiny_model_dir),
            "--size",
            "32",
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "2",
            "--kl-thresholds",
            "0.9,0.9",
            "--seed",
            "0",
        ]
    )
    assert rc == 0
    for stem, (h, w) in (("img0", (48, 40)), ("img1", (64, 64))):
        labels = np.asarray(Image.open(out / f"{stem}.labels.png"))
        assert labels.shape == (h, w)  # the whole image, at its own size
        assert Image.open(out / f"{stem}.overlay.png").size == (w, h)
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["method"] == "diffseg" and data["config"]["kl_thresholds"] == [0.9, 0.9]
        assert data["config"]["num_anchors_per_side"] == 16  # library default, untouched by the CLI
        assert sum(s["area"] for s in data["segments"]) == h * w
        assert data["meta"]["frame"] == "input" and data["meta"]["input_size"] == [h, w]
        assert data["meta"]["model_size"] == [32, 32] and data["meta"]["preset"] is None


def test_bad_files_are_reported_and_the_batch_goes_on(tiny_model_dir, photos, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            photos[0],
            str(bad),
            str(tmp_path / "missing.png"),
            "--model",
            str(tiny_model_dir),
            "--size",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad.jpg" in err and "missing.png" in err and "1 of 3" in err
    assert (out / "img0.json").exists() and not (out / "bad.json").exists()


def test_existing_outputs_are_kept_without_overwrite(tiny_model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", photos[0], "--model", str(tiny_model_dir), "--size", "32", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    (out / "img0.json").write_text("keep me")
    assert main(args) == 1
    assert (out / "img0.json").read_text() == "keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "img0.json").read_text())["method"] == "diffseg"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kl-thresholds", "0"], "--kl-thresholds must be"),
        (["--kl-thresholds", "0.5,inf"], "--kl-thresholds must be a finite number"),
        (["--num-anchors-per-side", "0"], "--num-anchors-per-side"),
        (["--timestep", "5000"], "--timestep must be an int in [0, 1000)"),
        (["--method", "nope"], "unknown method"),
        (["--tau", "0.3"], "does not apply"),
        (["--size", "30"], "--size must be a multiple of 16"),
    ],
)
def test_invalid_options_exit_2_with_a_clear_message(tiny_model_dir, photos, tmp_path, capsys, extra, message):
    rc = main(
        ["segment", photos[0], "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--no-progress", *extra]
    )
    captured = capsys.readouterr().err
    assert rc == 2 and message in captured and "Traceback" not in captured
    assert not (tmp_path / "o" / "img0.json").exists()


def test_missing_model_exits_2_and_says_how_to_pass_model(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    rc = main(["segment", photos[0], "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model" in err and err.count("error:") == 1
    assert main(["segment", photos[0], "--model", str(tmp_path), "--no-progress"]) == 2
    assert "not a diffusers" in capsys.readouterr().err


def test_env_and_python_dash_m(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "diffseg" in out and "devices" in out
    proc = subprocess.run([sys.executable, "-m", "diffuseg", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "diffuseg" in proc.stdout
    assert main([]) == 2


def test_image_smaller_than_latent_grid_is_reported(tiny_model_dir, tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.new("L", (6, 6), 100).save(tiny)  # grayscale, 6 px < 16-token latent side at --size 32
    rc = main(
        [
            "segment",
            str(tiny),
            "--model",
            str(tiny_model_dir),
            "--size",
            "32",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "smaller than the model's latent grid" in err and "too small for this model" in err
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 12), 100).save(small)  # 10 px: fits a model input of 10 * 2 -> 16
    rc = main(
        [
            "segment",
            str(small),
            "--model",
            str(tiny_model_dir),
            "--size",
            "32",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 1 and "use --size 16 or smaller" in capsys.readouterr().err
    assert not (tmp_path / "o" / "tiny.json").exists()
