"""`diffuseg batch` on the local engine: INPUT forms, per-image seeding, resuming, failures,
a full output folder. (The Ray engine: `test_engine_ray.py`.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.engine.inputs import resolve_inputs
from diffuseg.engine.seeding import image_generator, image_seed
from diffuseg.engine.work import OUTPUTS

#: Noise matters: the VAE posterior is sampled and the latent noised, from each image's generator.
NOISY = ("--add-noise", "--latent-mode", "sample")


def _photo(path, size=(40, 48), seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def _photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _photo(folder / f"img{i:02d}.png", seed=i)
    return folder


def _batch(model, *args):
    return main(["batch", "--model", str(model), "--size", "32", "--no-progress", *NOISY, *args])


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.endswith(OUTPUTS)}


# ------------------------------------------------------------------ INPUT
def test_input_is_a_folder_a_glob_a_list_or_a_dataset(tmp_path):
    folder = _photos(tmp_path / "in", 3)
    (folder / "notes.txt").write_text("not an image")
    names = [it.name for it in resolve_inputs(str(folder))]
    assert names == ["img00", "img01", "img02"]
    assert [it.name for it in resolve_inputs(str(folder / "img0[12].png"))] == ["img01", "img02"]
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\nin/img02.png\n\n" + str(folder / "img00.png") + "\n")
    assert [Path(it.source).name for it in resolve_inputs(str(listing))] == ["img02.png", "img00.png"]
    items = resolve_inputs("dataset:synthetic", limit=3)
    assert [it.name for it in items] == ["synthetic-val-000000", "synthetic-val-000001", "synthetic-val-000002"]
    assert items[2].source == "dataset:synthetic/val#2"


def test_an_empty_input_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for arg in (str(tmp_path / "empty"), str(tmp_path / "nothing-*.png"), str(tmp_path / "missing")):
        assert _batch(tiny_model_dir, arg, "--out", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err
        assert "INPUT" in err and arg in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_ray_flags_are_refused_with_the_local_engine(tiny_model_dir, tmp_path, capsys):
    img = _photo(tmp_path / "p.png")
    assert _batch(tiny_model_dir, img, "--out", str(tmp_path / "o"), "--actors", "2") == 2
    assert "--actors apply to --engine ray" in capsys.readouterr().err


# ------------------------------------------------------------------ seeding
def test_image_seeds_are_stable_and_distinct():
    expected = int.from_bytes(hashlib.sha256(b"0:a").digest()[:8], "big") >> 1  # the documented definition
    assert image_seed(0, "a") == image_seed(0, "a") == expected
    assert len({image_seed(s, i) for s in (0, 1) for i in ("a", "b", "c")}) == 6
    assert 0 <= image_seed(2**40, "x") < 2**63
    a, b = image_generator(3, "x"), image_generator(3, "x")
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def test_a_query_draws_its_noise_from_its_own_generator(tiny_backbone, quadrant_image):
    """Per-query generators: a query's result does not depend on the other queries of the call."""
    from diffuseg.segmenter import Segmenter

    other = quadrant_image.transpose(Image.FLIP_LEFT_RIGHT)
    seg = Segmenter(tiny_backbone, "diffseg", image_size=32, add_noise=True, latent_mode="sample")
    alone = seg.segment_batch([quadrant_image], generator=[image_generator(0, "q")])[0]
    pair = seg.segment_batch([other, quadrant_image], generator=[image_generator(0, "o"), image_generator(0, "q")])
    assert torch.equal(alone.labels, pair[1].labels)
    with pytest.raises(ValueError, match="one per query"):
        seg.segment_batch([quadrant_image], generator=[image_generator(0, "q")] * 2)


def test_one_generator_per_image_draws_what_a_single_image_call_draws(tiny_backbone, quadrant_image):
    from diffuseg.backbone.features import FeatureRequest

    request = FeatureRequest(hidden_states=("down_blocks.0",))
    pixels, _ = tiny_backbone.preprocess([quadrant_image, quadrant_image], 32)
    kw = dict(add_noise=True, latent_mode="sample", timestep=300)
    both = tiny_backbone.extract(pixels, request, generator=[image_generator(0, "a"), image_generator(0, "b")], **kw)
    one = tiny_backbone.extract(pixels[1:], request, generator=image_generator(0, "b"), **kw)
    key = "down_blocks.0"
    torch.testing.assert_close(both.hidden_states[key][1], one.hidden_states[key][0])
    assert not torch.allclose(both.hidden_states[key][0], both.hidden_states[key][1])  # a and b differ
    with pytest.raises(ValueError, match="one per image"):
        tiny_backbone.extract(pixels, request, generator=[image_generator(0, "a")], **kw)


def test_segment_and_batch_write_the_same_bytes(tiny_model_dir, tmp_path, capsys):
    """One loop: ``segment`` on a folder's files and ``batch`` on the folder write identical files
    (same seed, batch size and device), with noise drawn per image (posterior sample, noised
    latent); without --seed both use seed 0, and segment's seed changes its noise."""
    folder = _photos(tmp_path / "in", 3)
    files = sorted(str(p) for p in folder.iterdir())
    common = ["--model", str(tiny_model_dir), "--size", "32", "--no-progress", *NOISY, "--batch-size", "2"]
    for seed in ([], ["--seed", "5"]):
        tag = "-".join(seed) or "default"
        assert main(["batch", str(folder), "--out", str(tmp_path / f"batch{tag}"), *common, *seed]) == 0
        assert main(["segment", *files, "--out", str(tmp_path / f"segment{tag}"), *common, *seed]) == 0
        assert _outputs(tmp_path / f"segment{tag}") == _outputs(tmp_path / f"batch{tag}")
        assert len(_outputs(tmp_path / f"batch{tag}")) == 9
    assert _outputs(tmp_path / "segmentdefault") != _outputs(tmp_path / "segment--seed-5")
    meta = json.loads((tmp_path / "segment--seed-5" / "img02.json").read_text())["meta"]
    assert meta["seed"] == {"run": 5, "image": image_seed(5, "img02")} and meta["source"] == files[2]


# ------------------------------------------------------------------ resuming and failures
def test_a_rerun_completes_an_interrupted_run_with_the_same_bytes(tiny_model_dir, tmp_path, capsys):
    folder = _photos(tmp_path / "in", 5)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _batch(tiny_model_dir, str(folder), "--out", str(ref), "--batch-size", "2") == 0
    # interrupted after the first unit, and in the middle of the third (one file of img04)
    assert _batch(tiny_model_dir, str(folder), "--out", str(out), "--batch-size", "2", "--limit", "2") == 0
    (out / "img04.labels.png").write_bytes(b"partial")
    capsys.readouterr()
    assert _batch(tiny_model_dir, str(folder), "--out", str(out), "--batch-size", "2") == 0
    err = capsys.readouterr().err
    assert "5 of 5 image(s)" in err and "2 already done" in err
    assert _outputs(out) == _outputs(ref) and len(_outputs(ref)) == 15
    assert _batch(tiny_model_dir, str(folder), "--out", str(out), "--batch-size", "2") == 0  # nothing to do
    assert "5 already done" in capsys.readouterr().err


def test_the_seed_changes_the_noise_and_the_output_json_records_it(tiny_model_dir, tmp_path):
    folder = _photos(tmp_path / "in", 2)
    for seed in ("0", "1"):
        assert _batch(tiny_model_dir, str(folder), "--out", str(tmp_path / seed), "--seed", seed) == 0
    meta = json.loads((tmp_path / "1" / "img01.json").read_text())["meta"]
    assert meta["seed"] == {"run": 1, "image": image_seed(1, "img01")}
    assert "seconds_model" not in meta  # timings would make outputs differ between runs


def test_a_bad_file_is_recorded_and_the_run_goes_on(tiny_model_dir, tmp_path, capsys):
    folder = _photos(tmp_path / "in", 3)
    (folder / "img01.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    assert _batch(tiny_model_dir, str(folder), "--out", str(out), "--batch-size", "2") == 1
    err = capsys.readouterr().err
    assert "2 of 3 image(s)" in err and "failures.jsonl" in err
    (record,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert record["name"] == "img01" and record["status"] == "failed" and "cannot read" in record["error"]
    assert set(_outputs(out)) == {f"img{i}{ext}" for i in ("00", "02") for ext in OUTPUTS}
    _photo(folder / "img01.png", seed=1)  # fixed: the rerun does it and clears the list
    assert _batch(tiny_model_dir, str(folder), "--out", str(out), "--batch-size", "2") == 0
    assert len(_outputs(out)) == 9 and not (out / "failures.jsonl").exists()


def test_a_full_output_folder_stops_the_run_and_leaves_nothing_of_the_image_it_was_writing(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    import diffuseg.types

    folder = _photos(tmp_path / "in", 3)
    out = tmp_path / "o"
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the disk fills up while the second image's overlay is written
        calls.append(fd)
        if len(calls) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(diffuseg.types.os, "fsync", fsync)
    assert _batch(tiny_model_dir, str(folder), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "is full" in err and "rerun" in err
    # all of an image's files or none: img01's label map, written before the disk filled, is not left behind
    assert sorted(p.name for p in out.iterdir()) == [f"img00{ext}" for ext in sorted(OUTPUTS)]
    monkeypatch.setattr(diffuseg.types.os, "fsync", real_fsync)  # space freed: the rerun completes
    assert _batch(tiny_model_dir, str(folder), "--out", str(out)) == 0
    assert len(_outputs(out)) == 9 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_local_engine_imports_no_ray(tiny_model_dir, tmp_path):
    img = _photo(tmp_path / "p.png")
    code = (
        "import sys; from diffuseg.cli import main; "
        f"rc = main(['batch', {img!r}, '--model', {str(tiny_model_dir)!r}, '--size', '32', '--no-progress', "
        f"'--out', {str(tmp_path / 'o')!r}]); "
        "sys.exit(10 if 'ray' in sys.modules else rc)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode == 0
