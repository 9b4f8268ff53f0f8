"""Seg-diffusion inference: one batch per image for all (class, member) pairs, the checkpoint
resource, labels from the sampled masks."""

from __future__ import annotations

import copy

import pytest
import torch

from diffuseg.plan import Query
from diffuseg.segdiffusion import widen_conv_in
from diffuseg.segdiffusion.checkpoint import CheckpointError, save_checkpoint
from diffuseg.segdiffusion.sampler import MaskModel
from diffuseg.segmenter import Segmenter

SHORT = {"template": "{class}", "image_size": 32, "steps": 3, "ensemble": 2}


def mask_model(backbone) -> MaskModel:
    """An untrained mask UNet widened from the backbone's own (tests of the plumbing only)."""
    return MaskModel(widen_conv_in(copy.deepcopy(backbone.unet)).eval(), {"base_model": "tiny"})


def test_all_class_member_pairs_of_an_image_share_each_unet_call(tiny_backbone, quadrant_image):
    model = mask_model(tiny_backbone)
    batches = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        seg = Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": model}, **SHORT)
        out = seg(Query(image=quadrant_image, classes="a, b|d, c"), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert batches == [4 * 2] * 3  # 4 names x 2 members, one call per DDIM step
    assert out.names == ["a", "b", "c"] and out.labels.max() < 3 and seg.model_calls == 1
    again = Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": model}, **SHORT)
    same = again(Query(image=quadrant_image, classes="a, b|d, c"), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same.extras["class_scores"], out.extras["class_scores"])
    assert torch.isfinite(out.extras["class_scores"]).all()


def test_checkpoint_resource_from_a_folder_and_its_errors(tiny_backbone, quadrant_image, tmp_path):
    model = mask_model(tiny_backbone)
    save_checkpoint(tmp_path / "ck", model.unet, {"base_model": "tiny"})
    seg = Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": str(tmp_path / "ck")}, **SHORT)
    assert isinstance(seg.resources["checkpoint"], MaskModel)
    with pytest.raises(ValueError, match="needs the resource 'checkpoint'"):
        Segmenter(tiny_backbone, "segdiffusion", **SHORT)
    with pytest.raises(CheckpointError, match="segdiffusion.json not found"):
        Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": str(tmp_path / "nope")}, **SHORT)


def test_background_threshold_competes_with_the_masks(tiny_backbone, quadrant_image):
    seg = Segmenter(
        tiny_backbone, "segdiffusion", resources={"checkpoint": mask_model(tiny_backbone)}, background_threshold=1.0,
        **SHORT,
    )  # fmt: skip
    out = seg(Query(image=quadrant_image, classes="background, a"), torch.Generator().manual_seed(0))
    assert (out.labels == 0).all()  # no probability exceeds 1


def test_a_checkpoint_for_another_base_model_is_refused_by_name(tiny_backbone, quadrant_image):
    model = mask_model(tiny_backbone)
    wrong = MaskModel(model.unet, {"base_model": "sd2", "prediction_type": "v_prediction"}, "/runs/sd2/checkpoint")
    seg = Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": wrong}, **SHORT)
    with pytest.raises(ValueError, match=r"/runs/sd2/checkpoint does not fit .*'sd2'.*'v_prediction' prediction"):
        seg(Query(image=quadrant_image, classes="a, b"), torch.Generator().manual_seed(0))


def test_the_shipped_checkpoint_is_the_default_on_the_toy_model_only(tiny_backbone):
    from diffuseg.backbone.loading import toy_model_path
    from diffuseg.segdiffusion.checkpoint import shipped_checkpoint

    assert shipped_checkpoint(tiny_backbone) is None
    assert shipped_checkpoint(None) is None

    class Toy:
        name = "toy"

    assert shipped_checkpoint(Toy()) == str(toy_model_path().parent / "segdiffusion-toy")


def test_cli_checkpoint_flag(tiny_model_dir, tiny_backbone, photo, tmp_path, capsys):
    from diffuseg.cli import main

    model = mask_model(tiny_backbone)
    save_checkpoint(tmp_path / "ck", model.unet, {"base_model": "tiny"})
    argv = ["segment", photo, "--model", str(tiny_model_dir), "--method", "segdiffusion", "--classes", "a,b",
            "--template", "{class}", "--size", "32", "--steps", "2", "--ensemble", "2", "--seed", "0",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "photo.labels.png").is_file()
    both = ["--checkpoint", str(tmp_path / "ck"), "--resource", f"checkpoint={tmp_path / 'ck'}"]
    assert main([*argv, *both, "--out", str(tmp_path / "o2")]) == 2
    assert "--checkpoint and --resource checkpoint" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")]) != 0
    assert "segdiffusion.json not found" in capsys.readouterr().err


@pytest.mark.parametrize(("spacing", "first"), [("trailing", 999), ("leading", 900)])
def test_ddim_starts_where_the_spacing_says(spacing, first, tiny_backbone, quadrant_image):
    """Trailing spacing puts the first of 10 steps at T - 1, where the pure noise the sampler
    starts from belongs; leading (the SD schedulers', steps_offset 0 here) at 900."""
    model = mask_model(tiny_backbone)
    steps = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: steps.append(int(args[1])))
    try:
        seg = Segmenter(tiny_backbone, "segdiffusion", resources={"checkpoint": model},
                        **{**SHORT, "steps": 10, "timestep_spacing": spacing})  # fmt: skip
        seg(Query(image=quadrant_image, classes="a"), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(steps) == 10 and steps[0] == first and steps == sorted(steps, reverse=True)
