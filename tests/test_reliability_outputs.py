"""Issue 23, the outputs of ``segment`` / ``batch``: every image's files written all or none,
a save error failing only its image, reruns that check the recorded settings, and the outputs a
segmentation user expects (16-bit label maps, ``--save npy,masks``, ``--no-overlay``,
``--max-pixels``).

Each test goes through `diffuseg.cli.main`; the baselines (``slic``, ``kmeans-color``) need no
model, the others use the tiny model saved to a temp dir (`tiny_model_dir`).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.engine.seeding import resolve_seed
from diffuseg.imageio import ImageLoadError, load_image
from diffuseg.outputs import OUTPUTS, write_outputs
from diffuseg.types import LABELS_16BIT, Segmentation


def _photo(path: Path, size=(40, 48), seed=0) -> str:
    h, w = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _run(command: str, *args: str) -> int:
    return main([command, "--no-progress", *args])


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _tiny(model, *args) -> list[str]:
    return ["--model", str(model), "--size", "32", *args]


# ------------------------------------------------------------------ 1. more than 255 segments
@pytest.mark.parametrize("command", ["segment", "batch"])
def test_more_than_255_segments_give_a_16_bit_label_png_for_every_image(tmp_path, command, capsys):
    a, b = _photo(tmp_path / "a.png", (64, 64), 0), _photo(tmp_path / "b.png", (64, 64), 1)
    out = tmp_path / "o"
    inputs = [a, b] if command == "segment" else [str(tmp_path)]
    rc = _run(command, *inputs, "--method", "slic", "--n-segments", "1000", "--compactness", "1", "--out", str(out))
    assert rc == 0, capsys.readouterr().err
    for name in ("a", "b"):
        record = json.loads((out / f"{name}.json").read_text())
        png = Image.open(out / f"{name}.labels.png")
        labels = np.asarray(png)
        assert record["num_segments"] > 256 and record["label_bits"] == 16
        assert png.mode == "I;16" and labels.max() == max(s["id"] for s in record["segments"])
        assert sorted(np.unique(labels).tolist()) == [s["id"] for s in record["segments"]]


def test_the_label_png_is_8_bit_up_to_256_labels_and_16_bit_above():
    for k, bits, mode in ((256, 8, "P"), (257, 16, "I;16"), (LABELS_16BIT, 16, "I;16")):
        labels = torch.arange(k).reshape(1, k)
        seg = Segmentation(labels)
        image = seg.to_label_image()
        assert (seg.label_bits, image.mode) == (bits, mode)
        assert np.array_equal(np.asarray(image), labels.numpy())  # the pixel values are the label ids
    with pytest.raises(ValueError, match="16-bit"):
        Segmentation(torch.arange(LABELS_16BIT + 1).reshape(1, -1)).to_label_image()


def test_a_save_error_fails_only_its_own_image(tmp_path, capsys, monkeypatch):
    a, b = _photo(tmp_path / "a.png", (40, 48)), _photo(tmp_path / "b.png", (48, 40))
    real = Segmentation.to_label_image

    def to_label_image(self):  # the 48x40 image cannot be saved
        if self.size == (48, 40):
            raise ValueError("this label map cannot be written")
        return real(self)

    monkeypatch.setattr(Segmentation, "to_label_image", to_label_image)
    for command, inputs in (("segment", [a, b]), ("batch", [str(tmp_path)])):
        out = tmp_path / f"o-{command}"
        assert _run(command, *inputs, "--method", "kmeans-color", "--out", str(out)) == 1
        err = capsys.readouterr().err
        assert "b.png: cannot save: this label map cannot be written" in err and "1 of 2 image(s)" in err
        assert [n for n in _files(out) if not n.endswith(".jsonl")] == [f"a{s}" for s in sorted(OUTPUTS)]
    failures = [json.loads(line) for line in (tmp_path / "o-batch" / "failures.jsonl").read_text().splitlines()]
    assert [f["name"] for f in failures] == ["b"]


# ------------------------------------------------------------------ 2. reruns check the recorded settings
def test_a_batch_rerun_with_another_method_stops_before_any_work(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        _photo(folder / f"p{i}.png", seed=i)
    out = tmp_path / "o"
    assert _run("batch", str(folder), *_tiny(tiny_model_dir), "--out", str(out)) == 0
    before = {n: (out / n).read_bytes() for n in _files(out)}
    capsys.readouterr()
    assert _run("batch", str(folder), "--method", "kmeans-color", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "2 image(s) already have outputs" in err and "method 'diffseg' (this run: 'kmeans-color')" in err
    assert "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in _files(out)} == before  # nothing touched
    assert _run("batch", str(folder), "--method", "kmeans-color", "--out", str(out), "--overwrite") == 0
    assert json.loads((out / "p0.json").read_text())["method"] == "kmeans-color"
    assert _run("batch", str(folder), "--method", "kmeans-color", "--out", str(out)) == 0  # now done
    assert "2 already done" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "differs"),
    [
        (["--seed", "3"], "--seed 0 (this run: 3)"),
        (["--kl-thresholds", "0.5,0.5,0.5"], "--kl-thresholds"),
        (["--method", "diffcut"], "method 'diffseg' (this run: 'diffcut')"),
        (["--classes", "cat,dog"], "--classes None (this run: [['cat'], ['dog']])"),
    ],
)
def test_skip_existing_counts_an_image_done_only_with_the_recorded_settings(
    tiny_model_dir, tmp_path, capsys, flags, differs
):
    img = _photo(tmp_path / "p.png")
    out = tmp_path / "o"
    assert _run("segment", img, *_tiny(tiny_model_dir), "--out", str(out)) == 0
    record = (out / "p.json").read_bytes()
    capsys.readouterr()
    assert _run("segment", img, *_tiny(tiny_model_dir), "--out", str(out), "--skip-existing", *flags) == 2
    err = capsys.readouterr().err
    assert differs in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "p.json").read_bytes() == record
    assert _run("segment", img, *_tiny(tiny_model_dir), "--out", str(out), "--skip-existing") == 0
    assert "1 already done" in capsys.readouterr().err


# ------------------------------------------------------------------ 4. an over-long output name
def test_an_over_long_output_name_fails_only_that_image(tmp_path, capsys):
    long_name = tmp_path / ("a" * 245 + ".png")  # a valid file name whose outputs' names are too long
    good = _photo(tmp_path / "good.png")
    _photo(long_name)
    out = tmp_path / "o"
    assert _run("segment", str(long_name), good, "--method", "kmeans-color", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "is too long" in err and "rename the image" in err and "Traceback" not in err
    assert "1 of 2 image(s)" in err
    assert _files(out) == [f"good{s}" for s in sorted(OUTPUTS)]


# ------------------------------------------------------------------ 5. a full disk leaves no orphans
def _fill_disk_after(monkeypatch, n_files: int) -> None:
    """os.fsync fails with ENOSPC from the `n_files`-th file on (injected full disk)."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= n_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_a_full_disk_leaves_no_orphan_file_and_a_rerun_finishes(tmp_path, capsys, monkeypatch, command):
    folder = tmp_path / "in"
    folder.mkdir()
    imgs = [_photo(folder / f"p{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "o"
    inputs = imgs if command == "segment" else [str(folder)]
    with monkeypatch.context() as m:
        _fill_disk_after(m, 5)  # p0's three files fit; the disk fills during p1's overlay
        assert _run(command, *inputs, "--method", "kmeans-color", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "is full" in err and "rerun" in err and "Traceback" not in err
    assert _files(out) == [f"p0{s}" for s in sorted(OUTPUTS)]  # nothing of p1: no orphan label map, no temp
    again = ["--skip-existing"] if command == "segment" else []
    assert _run(command, *inputs, "--method", "kmeans-color", "--out", str(out), *again) == 0
    assert len(_files(out)) == 3 * len(OUTPUTS)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_tmpfs_leaves_no_orphan_file(tmp_path, capsys):
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        imgs = [_photo(tmp_path / f"p{i}.png", (96, 96), seed=i) for i in range(4)]
        assert _run("segment", *imgs, "--method", "slic", "--out", str(disk)) == 1
        assert "is full" in capsys.readouterr().err
        names = _files(disk)
        stems = {n.split(".")[0] for n in names}
        assert names == sorted(f"{s}{x}" for s in stems for x in OUTPUTS)  # every image whole, or absent
        assert len(stems) < 4
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------ minor: inputs and folders
def test_segment_on_a_folder_or_a_fifo_says_so_before_the_model_loads(tmp_path, capsys):
    missing_model = str(tmp_path / "no-model")
    assert _run("segment", str(tmp_path), "--model", missing_model) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "diffuseg batch" in err and "no-model" not in err
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert _run("segment", str(fifo), "--model", missing_model) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = _photo(tmp_path / "p.png")
    for command, inputs in (("segment", [img]), ("batch", [img])):
        assert _run(command, *inputs, "--method", "kmeans-color", "--out", "") == 2
        assert "--out is empty" in capsys.readouterr().err
    assert _files(tmp_path) == ["p.png"]


def test_max_pixels_refuses_a_huge_image_from_its_header(tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(big)  # 6 megapixels, a few kB on disk
    good = _photo(tmp_path / "good.png")
    out = tmp_path / "o"
    assert (
        _run("segment", str(big), good, "--method", "kmeans-color", "--max-pixels", "1000000", "--out", str(out)) == 1
    )
    err = capsys.readouterr().err
    assert "3000x2000 = 6,000,000 pixels, above --max-pixels 1,000,000" in err and "1 of 2 image(s)" in err
    assert _run("segment", good, "--max-pixels", "0", "--out", str(out)) == 2  # a flag error
    assert "--max-pixels" in capsys.readouterr().err
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(ImageLoadError, match="above `max_pixels`"):
        load_image(big, max_pixels=10)
    assert not decoded  # refused from the header: no pixel was decoded


# ------------------------------------------------------------------ the outputs a user expects
def test_save_npy_and_masks_hold_the_label_map(tmp_path, capsys):
    img = _photo(tmp_path / "p.png", (40, 48))
    out = tmp_path / "o"
    assert _run("segment", img, "--method", "slic", "--n-segments", "6", "--save", "npy,masks", "--out", str(out)) == 0
    labels = np.asarray(Image.open(out / "p.labels.png"))
    array = np.load(out / "p.labels.npy")
    assert array.shape == (40, 48) and array.dtype == np.uint8 and np.array_equal(array, labels)
    masks = sorted((out / "p.masks").iterdir())
    ids = [s["id"] for s in json.loads((out / "p.json").read_text())["segments"]]
    assert [m.name for m in masks] == [f"{k:03d}.png" for k in ids]
    for k, m in zip(ids, masks, strict=True):
        assert np.array_equal(np.asarray(Image.open(m)) == 255, labels == k)
    assert _run("segment", img, "--save", "tiff", "--out", str(out)) == 2
    assert "choose from npy, masks" in capsys.readouterr().err


def test_masks_are_named_by_class_and_no_overlay_skips_the_overlay(tiny_model_dir, tmp_path):
    img = _photo(tmp_path / "p.png")
    out = tmp_path / "o"
    flags = [*_tiny(tiny_model_dir), "--method", "diffsegmenter", "--template", "{class}"]
    flags += ["--classes", "cat,tv|monitor"]
    assert _run("segment", img, *flags, "--save", "masks", "--no-overlay", "--out", str(out)) == 0
    assert _files(out) == ["p.json", "p.labels.png", "p.masks"]
    record = json.loads((out / "p.json").read_text())
    expected = [f"{s['id']:03d}-{s['name']}.png" for s in record["segments"]]
    assert sorted(p.name for p in (out / "p.masks").iterdir()) == expected and expected
    # the rerun counts the image done by the files this run writes (no overlay)
    assert _run("segment", img, *flags, "--save", "masks", "--no-overlay", "--out", str(out), "--skip-existing") == 0


def test_write_outputs_replaces_a_mask_folder_whole(tmp_path):
    out = tmp_path / "o"
    write_outputs(Segmentation(torch.tensor([[0, 1, 2]])), out, "x", save=("masks",))
    write_outputs(Segmentation(torch.tensor([[0, 0, 1]])), out, "x", save=("masks",), overwrite=True)
    assert sorted(p.name for p in (out / "x.masks").iterdir()) == ["000.png", "001.png"]
    assert _files(out) == ["x.json", "x.masks"]  # no temp folder left


def test_to_numpy_is_the_int64_label_map():
    seg = Segmentation(torch.tensor([[0, 3], [2, 1]]))
    array = seg.to_numpy()
    assert array.dtype == np.int64 and array.tolist() == [[0, 3], [2, 1]]


def test_an_interrupted_run_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import diffuseg.engine.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffuseg.engine.runner, "run_batch", interrupted)
    img = _photo(tmp_path / "p.png")
    assert _run("segment", img, "--method", "kmeans-color", "--out", str(tmp_path / "o")) == 130
    assert "interrupted; rerun with --skip-existing" in capsys.readouterr().err
    assert _run("batch", img, "--method", "kmeans-color", "--out", str(tmp_path / "o")) == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    import diffuseg.eval

    monkeypatch.setattr(diffuseg.eval, "evaluate", interrupted)
    eval_args = ["--dataset", "synthetic", "--method", "kmeans-color", "--limit", "1", "--out", str(tmp_path / "e")]
    assert _run("eval", *eval_args) == 130
    assert "interrupted; rerun the same command with --resume" in capsys.readouterr().err


def test_run_seeds_are_64_bit():
    assert resolve_seed(2**64 - 1) == 2**64 - 1
    for bad in (2**64, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*64\)"):
            resolve_seed(bad)


def test_every_seed_takes_the_same_64_bit_range(tmp_path, capsys):
    from diffuseg.demo.session import DemoSession
    from diffuseg.methods.kmeanscolor import KMeansColorConfig
    from diffuseg.methods.maskdiffusion import MaskDiffusionKMeansConfig
    from diffuseg.ops.noise import per_item_generators

    for make in (KMeansColorConfig, MaskDiffusionKMeansConfig, lambda seed: DemoSession(lambda: None, "m", seed=seed)):
        make(seed=2**64 - 1)
        for bad in (2**64, -1):
            with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*64\)"):
                make(seed=bad)
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator, one per image"):
        per_item_generators(5, 2)
    out = str(tmp_path / "pg")
    assert main(["train", "proving-ground", "--out", out, "--seed", str(2**64)]) == 2
    assert "argument --seed: must be an int in [0, 2**64)" in capsys.readouterr().err
    assert not os.path.exists(out)
