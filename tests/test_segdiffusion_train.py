"""Seg-diffusion training: resume continues the same loss curve; config mismatches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffuseg.eval import ArrayDataset
from diffuseg.segdiffusion.train import ConfigMismatchError, SegTrainConfig, train
from diffuseg.types import Sample


@pytest.fixture
def blocks():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        label = np.zeros((40, 48), np.int64)
        image = np.full((40, 48, 3), 40, np.uint8)
        y, x = int(rng.integers(0, 16)), int(rng.integers(0, 20))
        label[y : y + 20, x : x + 24] = 1
        image[y : y + 20, x : x + 24] = (220, 60, 60)
        samples.append(Sample(str(i), Image.fromarray(image), label))
    return ArrayDataset("blocks", ["a", "b"], samples)


CONFIG = SegTrainConfig(steps=6, batch_size=2, size=32, template="{class}", checkpoint_every=3, lr=1e-3)


def test_resume_continues_the_same_loss_curve(tiny_backbone, blocks, tmp_path):
    full = train(tiny_backbone, blocks, CONFIG, tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
    first = train(tiny_backbone, blocks, CONFIG, tmp_path / "cut", stop_after=4)  # killed after step 4
    assert len(first) == 4
    rest = train(tiny_backbone, blocks, CONFIG, tmp_path / "cut", resume=True)  # from the step-3 checkpoint
    assert [r["step"] for r in rest] == [4, 5, 6]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[3:]]
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # the redone step 4 is logged once
    assert all(np.isfinite(r["loss"]) for r in log)


def test_resume_refuses_another_config_and_a_new_run_refuses_an_old_folder(tiny_backbone, blocks, tmp_path):
    train(tiny_backbone, blocks, CONFIG, tmp_path / "run", stop_after=3)
    other = SegTrainConfig(**{**CONFIG.__dict__, "lr": 5e-4, "batch_size": 3})
    with pytest.raises(ConfigMismatchError, match="batch_size: run 2 vs now 3.*lr"):
        train(tiny_backbone, blocks, other, tmp_path / "run", resume=True)
    with pytest.raises(FileExistsError, match="resume"):
        train(tiny_backbone, blocks, CONFIG, tmp_path / "run")
    longer = SegTrainConfig(**{**CONFIG.__dict__, "steps": 7})  # only the step count may grow
    assert [r["step"] for r in train(tiny_backbone, blocks, longer, tmp_path / "run", resume=True)] == [4, 5, 6, 7]


def test_cli_trains_resumes_and_refuses_bad_runs(tiny_model_dir, tmp_path, capsys):
    from diffuseg.cli import main

    base = ["train", "segdiffusion", "--base", str(tiny_model_dir), "--dataset", "synthetic", "--num-scenes", "3",
            "--batch-size", "2", "--size", "32", "--template", "{class}", "--threads", "1", "--no-progress",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*base, "--steps", "2", "--checkpoint-every", "1"]) == 0
    assert (tmp_path / "run" / "checkpoint" / "segdiffusion.json").is_file()
    assert (tmp_path / "run" / "curves.png").is_file()
    assert main([*base, "--steps", "3"]) == 2
    assert "resume" in capsys.readouterr().err
    assert main([*base, "--steps", "3", "--resume", "--lr", "0.1"]) == 2
    assert "lr: run None vs now 0.1" in capsys.readouterr().err
    assert main([*base, "--steps", "3", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
