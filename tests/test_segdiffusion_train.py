"""Seg-diffusion training: resume continues the same loss curve; config mismatches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.datasets import ArrayDataset
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


def _sd2_backbone(tiny_components):
    """SD 2-shaped: linear projections, head dims per level, v-prediction (the tiny text encoder)."""
    from conftest import sd1_unet_config
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from diffuseg.backbone import DiffusionBackbone

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**sd1_unet_config(), "use_linear_projection": True,
                                   "attention_head_dim": (2, 2, 4, 4)})  # fmt: skip
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", clip_sample=False)  # fmt: skip
    parts = {**tiny_components, "unet": unet, "scheduler": scheduler}
    return DiffusionBackbone(**parts, name="tiny-sd2", family="sd2")


@pytest.mark.parametrize("shape", ["sd2", "sdxl"])
def test_a_tiny_model_trains_and_segments_through_the_same_code(
    shape, tiny_components, tiny_sdxl_backbone, blocks, quadrant_image, tmp_path
):
    """The trainer and the sampler on an SD 2-shaped (v-prediction) and an SDXL-shaped (pooled
    text + time ids) base: a checkpoint folder comes out and segments through `Segmenter`."""
    from diffuseg.plan import Query
    from diffuseg.segdiffusion.checkpoint import read_record
    from diffuseg.segmenter import Segmenter

    backbone = _sd2_backbone(tiny_components) if shape == "sd2" else tiny_sdxl_backbone
    config = SegTrainConfig(steps=3, batch_size=2, size=32, template="{class}", checkpoint_every=3, lr=1e-3)
    records = train(backbone, blocks, config, tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    record = read_record(tmp_path / "run" / "checkpoint")
    assert record["prediction_type"] == backbone.scheduler.config.prediction_type
    seg = Segmenter(backbone, "segdiffusion", resources={"checkpoint": str(tmp_path / "run" / "checkpoint")},
                    template="{class}", image_size=32, steps=2, ensemble=2)  # fmt: skip
    out = seg(Query(image=quadrant_image, classes="a, b"), torch.Generator().manual_seed(0))
    assert out.labels.shape == (32, 32) and out.names == ["a", "b"]
    assert torch.isfinite(out.extras["class_scores"]).all()


def test_mixed_precision_and_gradient_checkpointing_train(tiny_backbone, blocks, tmp_path):
    """bf16 autocast with gradient checkpointing runs, keeps float32 weights and resumes."""
    config = SegTrainConfig(**{**CONFIG.__dict__, "mixed_precision": "bf16", "gradient_checkpointing": True})
    records = train(tiny_backbone, blocks, config, tmp_path / "run", stop_after=3)
    assert all(np.isfinite(r["loss"]) for r in records)
    rest = train(tiny_backbone, blocks, config, tmp_path / "run", resume=True)
    assert [r["step"] for r in rest] == [4, 5, 6]
    from diffuseg.segdiffusion.checkpoint import load_checkpoint

    unet, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert next(unet.parameters()).dtype == torch.float32


def test_cosine_schedule_and_ema_resume_on_the_same_curve(tiny_backbone, blocks, tmp_path):
    config = SegTrainConfig(**{**CONFIG.__dict__, "lr_schedule": "cosine", "ema_decay": 0.9})
    full = train(tiny_backbone, blocks, config, tmp_path / "full")
    train(tiny_backbone, blocks, config, tmp_path / "cut", stop_after=4)
    rest = train(tiny_backbone, blocks, config, tmp_path / "cut", resume=True)
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[3:]]
    from diffuseg.segdiffusion.checkpoint import load_checkpoint

    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint")
    b, _ = load_checkpoint(tmp_path / "cut" / "checkpoint")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_lr_schedule_is_a_function_of_the_step():
    from diffuseg.segdiffusion.train import _lr_factor

    cosine = SegTrainConfig(steps=100, lr_schedule="cosine")
    assert _lr_factor(cosine, 0) == pytest.approx(1.0)
    assert _lr_factor(cosine, 50) == pytest.approx(0.55)
    assert _lr_factor(cosine, 100) == pytest.approx(0.1)
    assert _lr_factor(SegTrainConfig(steps=100), 70) == 1.0


def test_bad_training_settings_and_data_are_refused(tiny_backbone, tmp_path):
    for bad in ({"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.8, 0.5)}, {"lr_schedule": "linear"},
                {"mixed_precision": "fp8"}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            SegTrainConfig(**bad)
    unlabelled = ArrayDataset(
        "unlabelled", ["a"], [Sample("0", Image.new("RGB", (32, 32)), np.full((32, 32), 255, np.int64))]
    )
    with pytest.raises(ValueError, match="'unlabelled'.*no pixel of any of its 1 classes"):
        train(tiny_backbone, unlabelled, CONFIG, tmp_path / "run")
