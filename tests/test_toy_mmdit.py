"""The proving-ground diffusion transformer: its training (a tiny run end to end, resumed,
exported as an SD3 folder the backbone loads as family "toy-mmdit"), its grounding processor
(the output stays diffusers'), and `--model toy-mmdit`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffuseg.backbone.load import load_backbone
from diffuseg.backbone.loading import toy_model_path
from diffuseg.cli import main
from diffuseg.synthetic.mmdit_export import build_toy_pipeline, export_mmdit, train_toy_mmdit
from diffuseg.synthetic.mmdit_model import ToyMMDiTConfig, build_transformer
from diffuseg.synthetic.mmdit_train import JointGroundingProcessor, MMDiTTrainConfig, joint_grounding

diffusers = pytest.importorskip("diffusers")

TINY = ToyMMDiTConfig(num_layers=2, heads=2, head_dim=8, clip_hidden=4, t5_hidden=8)


def _config(out, steps: int = 3) -> MMDiTTrainConfig:
    vae = str(toy_model_path("toy") / "vae")
    return MMDiTTrainConfig(out=str(out), vae=vae, num_scenes=8, steps=steps, batch_size=4, model=TINY, log_every=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-step run, then resumed to 5 steps, exported: (run dir, export dir, state)."""
    root = tmp_path_factory.mktemp("toy_mmdit")
    torch.manual_seed(0)
    train_toy_mmdit(_config(root / "run"), command="first")
    pipe, state = train_toy_mmdit(_config(root / "run", steps=5), command="resumed")
    return root / "run", export_mmdit(pipe, state, root / "export"), state


def test_a_run_resumes_where_it_stopped_and_records_both_commands(tiny_run):
    run, export, state = tiny_run
    assert state.step == 5 and [s for s, *_ in state.losses] == [1, 2, 3, 4, 5]
    record = json.loads((export / "TRAINING.json").read_text())
    assert [c["command"] for c in record["commands"]] == ["first", "resumed"]
    assert record["steps"] == 5 and record["config"]["model"]["num_layers"] == 2
    assert all(f > 0 and 0 <= g <= 1 for _, f, g in record["losses"])


def test_the_export_is_an_sd3_folder_the_backbone_loads_as_the_toy_family(tiny_run):
    _, export, state = tiny_run
    backbone = load_backbone(str(export))
    assert (backbone.family, backbone.architecture) == ("toy-mmdit", "sd3")
    assert backbone.native_size == TINY.image_size and backbone.size_multiple == 4 * TINY.patch_size
    parts = backbone.text_parts("a red circle on grass")
    assert [(p.encoder, p.offset, len(p.token_ids)) for p in parts] == [("clip", 0, 32), ("t5", 32, 32)]
    assert parts[0].token_ids == parts[1].token_ids  # both parts spell the caption with CLIP's BPE
    words = backbone.prompt_tokenizer.convert_ids_to_tokens(list(parts[0].token_ids[:6]))
    assert words == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "on</w>", "grass</w>"]
    # the EMA weights were exported, the trained ones restored in the live modules
    saved = diffusers.SD3Transformer2DModel.from_pretrained(export / "transformer").state_dict()
    live = state.modules["transformer"].state_dict()
    ema = dict(zip([n for n, _ in state.modules["transformer"].named_parameters()], state.ema, strict=False))
    name = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(saved[name], ema[name]) and not torch.equal(saved[name], live[name])
    assert not (export.parent / "export.partial").exists()
    assert not (export / "tokenizer" / "tokenizer.json").exists()  # vocab.json + merges.txt say it


def test_the_grounding_processor_keeps_the_output_and_yields_text_maps():
    """Known answer: the same output as diffusers' processor; maps are distributions over text."""
    model = build_transformer(TINY, 4, torch.Generator().manual_seed(0))
    for p in model.parameters():  # leave adaLN-Zero: every block would be the identity
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 7, TINY.t5_hidden, generator=torch.Generator().manual_seed(2))
    pooled, t = torch.randn(2, 2 * TINY.clip_hidden), torch.tensor([300.0, 800.0])
    ref = model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
    before = dict(model.attn_processors)
    with joint_grounding(model) as maps:
        assert all(isinstance(p, JointGroundingProcessor) for p in model.attn_processors.values())
        out = model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample
    assert torch.allclose(out, ref, atol=1e-5)
    n = (16 // TINY.patch_size) ** 2
    assert len(maps) == TINY.num_layers and all(m.shape == (2, n, 7) for m in maps)
    assert all(torch.allclose(m.sum(-1), torch.ones(2, n), atol=1e-5) for m in maps)
    assert maps[0].requires_grad
    assert {k: type(v) for k, v in model.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_adaln_zero_starts_every_block_as_the_identity_and_predicts_zero():
    model = build_transformer(TINY, 4, torch.Generator().manual_seed(0))
    out = model(
        hidden_states=torch.randn(1, 4, 16, 16), encoder_hidden_states=torch.randn(1, 5, TINY.t5_hidden),
        pooled_projections=torch.randn(1, 2 * TINY.clip_hidden), timestep=torch.tensor([500.0]),
    ).sample  # fmt: skip
    assert torch.equal(out, torch.zeros_like(out))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="`clip_hidden`"):
        ToyMMDiTConfig(clip_hidden=16, t5_hidden=16)
    with pytest.raises(ValueError, match="`ema_decay`"):
        MMDiTTrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="`lr`"):
        dataclasses.replace(MMDiTTrainConfig(), lr=0.0)


def test_the_train_command_refuses_to_overwrite_or_resume_nothing(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "toy-mmdit", "--out", str(tmp_path / "run")]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(["train", "toy-mmdit", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err


def test_the_fresh_pipeline_is_sd3_shaped():
    pipe = build_toy_pipeline(_config("unused"))
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert pipe.transformer.config.joint_attention_dim == TINY.t5_hidden
    assert pipe.vae.config.shift_factor == 0.0 and pipe.tokenizer.model_max_length == TINY.text_tokens


@pytest.mark.skipif(not (toy_model_path("toy-mmdit") / "model_index.json").is_file(), reason="toy-mmdit not built")
def test_model_toy_mmdit_segments_a_scene_with_its_presets(tmp_path):
    argv = ["segment", "examples/scene.png", "--model", "toy-mmdit", "--out", str(tmp_path), "--no-progress"]
    for method in ("diffseg", "diffcut", "seg4diff", "maskdiffusion-kmeans"):
        assert main([*argv, "--method", method, "--overwrite"]) == 0
    for method in ("diffsegmenter", "maskdiffusion"):
        assert main([*argv, "--method", method, "--classes", "circle,grass,sky", "--overwrite"]) == 0
    meta = json.loads((tmp_path / "scene.json").read_text())["meta"]
    assert meta["preset"]["family"] == "toy-mmdit"


@pytest.mark.skipif(not (toy_model_path("toy-mmdit") / "model_index.json").is_file(), reason="toy-mmdit not built")
def test_samples_of_the_toy_mmdit_come_from_its_own_pipeline_at_its_native_size(tmp_path):
    from diffuseg.synthetic.samples import grid, sample_images
    from diffuseg.synthetic.samples import main as samples_main

    rows = sample_images(
        toy_model_path("toy-mmdit"), ("a red circle on grass",), num_per_caption=2, num_inference_steps=2
    )
    side = ToyMMDiTConfig().image_size
    assert [[im.size for im in row] for row in rows] == [[(side, side)] * 2]
    assert grid(rows, scale=1).size == (2 * side, side)
    with pytest.raises(SystemExit):
        samples_main(["--scale", "0", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not (toy_model_path("toy-mmdit") / "model_index.json").is_file(), reason="toy-mmdit not built")
def test_toy_mmdit_without_t5_asks_for_a_part_it_has_when_its_preset_reads_t5(tmp_path, capsys):
    from diffuseg.methods.diffsegmenter import PRESETS

    assert PRESETS["toy-mmdit"]["text_encoders"] == ("t5",)  # the case this test is about
    argv = ["segment", "examples/scene.png", "--model", "toy-mmdit", "--drop-t5", "--method", "diffsegmenter"]
    argv += ["--classes", "circle,grass,sky", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--text-encoders" in err and "['clip']" in err and "preset" in err
    assert not (tmp_path / "scene.json").exists()
    assert main([*argv, "--text-encoders", "clip"]) == 0
    assert json.loads((tmp_path / "scene.json").read_text())["config"]["text_encoders"] == ["clip"]
