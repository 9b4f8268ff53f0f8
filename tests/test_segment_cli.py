"""`diffuseg segment` / `inspect` as a user runs them: bookkeeping, errors and help.

Each test goes through `diffuseg.cli.main` with a tiny model saved to a temp dir (`tiny_model_dir`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main


def _photo(path, size=(48, 40), seed=0):
    h, w = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _segment(tiny_model_dir, *args):
    return main(["segment", "--model", str(tiny_model_dir), "--size", "32", "--no-progress", *args])


# ------------------------------------------------------------------ the whole image, its own size
@pytest.mark.parametrize("size", [(40, 96), (96, 40)])  # wide and tall
def test_wide_and_tall_photos_are_segmented_whole(tiny_model_dir, tmp_path, size):
    img = _photo(tmp_path / "p.png", size)
    assert _segment(tiny_model_dir, img, "--out", str(tmp_path / "o")) == 0
    labels = np.asarray(Image.open(tmp_path / "o" / "p.labels.png"))
    assert labels.shape == size  # every pixel of the photo has a label
    meta = json.loads((tmp_path / "o" / "p.json").read_text())["meta"]
    assert meta["crop_box"] == [0, 0, size[1], size[0]] and meta["frame"] == "input"
    # the model saw the whole photo with its aspect kept: longer side 32, shorter rounded to 16
    assert max(meta["model_size"]) == 32 and (meta["model_size"][0] < meta["model_size"][1]) == (size[0] < size[1])


# ------------------------------------------------------------------ bookkeeping
def test_a_bad_image_fails_only_itself_within_its_batch(tiny_model_dir, tmp_path, capsys):
    good = _photo(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (5, 5)).save(tiny)  # too small for the model's latent grid
    rc = _segment(tiny_model_dir, bad.as_posix(), good, str(tiny), "--batch-size", "3", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert rc == 1
    assert (tmp_path / "o" / "good.json").exists()
    assert not (tmp_path / "o" / "bad.json").exists() and not (tmp_path / "o" / "tiny.json").exists()
    assert "bad.jpg: cannot read" in err and "tiny.png: image of size 5x5" in err
    assert "1 of 3 image(s)" in err


def test_the_summary_counts_each_input_once(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _photo(tmp_path / "a" / "x.png", seed=1)
    two = _photo(tmp_path / "b" / "x.png", seed=2)  # another file with the same name
    rc = _segment(
        tiny_model_dir, one, one, str(tmp_path / "a" / ".." / "a" / "x.png"), two, "--out", str(tmp_path / "o")
    )
    assert rc == 0
    assert "2 of 2 image(s)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.json")) == ["x-2.json", "x.json"]
    assert json.loads((tmp_path / "o" / "x-2.json").read_text())["meta"]["source"] == two


def test_the_output_folder_is_checked_before_the_model_loads(tmp_path, capsys):
    img = _photo(tmp_path / "p.png")
    afile = tmp_path / "afile"
    afile.write_text("x")
    missing_model = str(tmp_path / "no-such-model")  # would fail with exit 2 too, but later
    rc = main(["segment", img, "--model", missing_model, "--out", str(afile), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "is a file" in err and "not available" not in err
    rc = main(["segment", img, "--model", missing_model, "--out", str(afile / "sub"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be written" in err and "not available" not in err


def test_skip_existing_resumes_an_interrupted_batch(tiny_model_dir, tmp_path, capsys):
    imgs = [_photo(tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "o"
    assert _segment(tiny_model_dir, imgs[0], "--out", str(out)) == 0
    first = json.loads((out / "p0.json").read_text())
    (out / "p0.json").write_text(json.dumps({**first, "note": "from the first run"}))  # a finished item is kept
    _photo(out / "p1.labels.png")  # an interrupted item: one of its three files
    capsys.readouterr()
    assert _segment(tiny_model_dir, *imgs, "--out", str(out)) == 1  # without the flag: p0, p1 refused, p2 done
    assert "--skip-existing" in capsys.readouterr().err
    assert _segment(tiny_model_dir, *imgs, "--out", str(out), "--skip-existing") == 0
    err = capsys.readouterr().err
    assert "3 of 3 image(s)" in err and "2 already done" in err
    assert json.loads((out / "p0.json").read_text())["note"] == "from the first run"
    assert json.loads((out / "p1.json").read_text())["method"] == "diffseg"
    assert np.asarray(Image.open(out / "p1.labels.png")).ndim == 2  # the partial output was redone
    assert _segment(tiny_model_dir, *imgs, "--out", str(out), "--skip-existing") == 0  # all done: exit 0


def test_output_files_get_normal_permissions(tiny_model_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert _segment(tiny_model_dir, _photo(tmp_path / "p.png"), "--out", str(tmp_path / "o")) == 0
    finally:
        os.umask(old)
    for name in ("p.labels.png", "p.overlay.png", "p.json"):
        assert stat.S_IMODE((tmp_path / "o" / name).stat().st_mode) == 0o644, name


def test_inspect_checks_out_before_the_model_and_writes_its_format(tiny_model_dir, tmp_path, capsys):
    img = _photo(tmp_path / "p.png")
    base = ["inspect", img, "--point", "5,5", "--method", "diffseg", "--size", "32"]
    missing = str(tmp_path / "no-such-model")
    assert main([*base, "--model", missing, "--out", str(tmp_path / "view.txt")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and ".png" in err and "not available" not in err
    (tmp_path / "taken.png").write_bytes(b"keep")
    assert main([*base, "--model", missing, "--out", str(tmp_path / "taken.png")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "taken.png").read_bytes() == b"keep"
    for name, fmt in (("view.jpg", "JPEG"), ("view.png", "PNG")):
        assert main([*base, "--model", str(tiny_model_dir), "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt and im.size == (2 * 32, 32)  # model view (32x32) and its map


# ------------------------------------------------------------------ errors, not tracebacks
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "tpu"])
def test_a_device_this_machine_lacks_is_a_usage_error(tiny_model_dir, tmp_path, capsys, device):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    rc = _segment(tiny_model_dir, _photo(tmp_path / "p.png"), "--device", device, "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert rc == 2 and "--device" in err and repr(device) in err and "Traceback" not in err
    assert not (tmp_path / "o" / "p.json").exists()


def test_a_size_whose_maps_do_not_fit_is_refused_with_one_that_does(tmp_path, capsys, monkeypatch):
    import diffuseg.devices

    monkeypatch.setattr(diffuseg.devices, "available_bytes", lambda device: 2**30)  # a 1 GiB machine
    img = _photo(tmp_path / "p.png", (256, 320))
    rc = main(["segment", img, "--model", "toy", "--size", "1024", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "GiB" in err and "free on cpu" in err
    fits = int(err.split("--size ")[-1].split()[0])  # "...; --size N fits."
    assert 0 < fits < 1024 and fits % 16 == 0
    assert (
        main(["segment", img, "--model", "toy", "--size", str(fits), "--out", str(tmp_path / "o"), "--no-progress"])
        == 0
    )


def test_list_options_take_one_value_and_never_swallow_images(tiny_model_dir, tmp_path, capsys):
    img = _photo(tmp_path / "p.png")
    assert _segment(tiny_model_dir, "--kl-thresholds", "0.5,0.5,0.5", img, "--out", str(tmp_path / "o")) == 0
    data = json.loads((tmp_path / "o" / "p.json").read_text())
    assert data["config"]["kl_thresholds"] == [0.5, 0.5, 0.5]
    assert _segment(tiny_model_dir, "--kl-thresholds", "0.5,x", img, "--out", str(tmp_path / "o2")) == 2
    assert "comma-separated" in capsys.readouterr().err


# ------------------------------------------------------------------ help
def test_help_lists_methods_and_groups_their_options(capsys):
    assert main(["segment", "--help"]) == 0
    out = capsys.readouterr().out
    from diffuseg.methods import get_method, list_methods

    for name in list_methods():  # one line per method under --method
        assert f"{name}: {get_method(name).description.split()[0]}" in out
    assert "diffseg options:" in out and "diffcut options:" in out and "options of several methods:" in out
    kl = out[out.index("\n  --kl-thresholds") : out.index("\n  --latent-mode")]
    assert "default: 1.1,1.1,1.1" in " ".join(kl.split())
    assert "one of mean, sample" in " ".join(out[out.index("\n  --latent-mode") :].split())


def test_top_level_help_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from diffuseg.cli import main; rc = main(['--help']); "
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "False False", proc.stdout + proc.stderr
    assert "segment" in proc.stdout and "eval" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "x.png", "--method", "diffcut,slic"],
        ["eval", "--dataset", "voc21", "--root", "r", "--method", "diffcut,slic", "--matching", "none"],
    ],
)
def test_segment_and_eval_help_import_no_torch(argv):
    """`diffuseg segment --help` / `eval --help` (and parsing their options) read the methods'
    configs from their torch-free `*_config` modules (`diffuseg.methods.catalog`), the datasets'
    names and the eval settings' choices (`diffuseg.eval.settings`), never the method code."""
    import subprocess
    import sys

    code = (
        f"import sys; from diffuseg.cli import build_parser; p = build_parser({argv[:1]!r}); "
        f"p.parse_args({argv!r}); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout + proc.stderr


def test_the_catalog_describes_every_registered_method():
    from diffuseg.methods import METHODS
    from diffuseg.methods.catalog import INFOS

    assert [i.name for i in INFOS] == sorted(METHODS)
    for info in INFOS:
        spec = METHODS[info.name]
        assert (spec.config_cls, spec.kind, spec.description, spec.resources) == (
            info.config_cls,
            info.kind,
            info.description,
            info.resources,
        )


def test_eval_protocol_that_fixes_the_size_refuses_size(tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--dataset",
            "synthetic",
            "--method",
            "diffseg",
            "--protocol",
            "diffseg",
            "--size",
            "128",
            "--model",
            "toy",
            "--limit",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--protocol diffseg fixes the model input at 512 px" in err and not list(tmp_path.iterdir())


def test_env_lists_the_presets(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "diffseg on toy: kl_thresholds=0.05,0.05,0.05, image_size=128" in out
    assert "diffcut on sd1: tau=0.2" in out
    assert "seg4diff on sd3: layer=9" in out
    assert "sd3: Stable Diffusion 3 (MM-DiT" in out and "flux: FLUX.1" in out  # the families


def test_the_readme_command_segments_the_whole_photo_with_the_toy_presets(tmp_path):
    photo = str(Path(__file__).resolve().parents[1] / "examples" / "chelsea.jpg")
    assert main(["segment", photo, "--model", "toy", "--out", str(tmp_path), "--no-progress"]) == 0
    labels = np.asarray(Image.open(tmp_path / "chelsea.labels.png"))
    assert labels.shape == (300, 451) and len(np.unique(labels)) > 1  # the whole 451x300 photo, > 1 segment
    meta = json.loads((tmp_path / "chelsea.json").read_text())["meta"]
    assert meta["preset"]["family"] == "toy" and meta["model_size"] == [80, 128]
