"""Single-file (original LDM / A1111 layout) checkpoints: temp-dir round trips, offline.

The tiny SD-1.x components of `conftest.py` are exported to one original-format state dict by
`tests/_ldm_export.py` (the inverse of diffusers' converters), saved as `.safetensors` and as
`.ckpt`, and loaded back with `DiffusionBackbone.from_pretrained(file, config=...)` with
``HF_HUB_OFFLINE=1``: every UNet / VAE / text-encoder tensor must come back bit for bit, and the
one UNet pass must record exactly what the in-memory backbone records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _ldm_export import clip_to_ldm, sd1_to_ldm, sdxl_to_ldm, unet_to_ldm, vae_to_ldm
from PIL import Image

from diffuseg.backbone import DiffusionBackbone, FeatureRequest, ModelNotFoundError, NotADiffusionModelError
from diffuseg.cli import main

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, and an empty Hugging Face cache unless a test fills one."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture(scope="module")
def ldm_state_dict(tiny_components) -> dict[str, torch.Tensor]:
    return sd1_to_ldm(tiny_components["unet"], tiny_components["vae"], tiny_components["text_encoder"])


@pytest.fixture(scope="module")
def config_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's diffusers folder WITHOUT weights: every tensor must come from the file."""
    d = tmp_path_factory.mktemp("configs") / "tiny-sd-configs"
    shutil.copytree(tiny_model_dir, d, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert not list(d.rglob("*.safetensors"))
    return d


@pytest.fixture(scope="module")
def checkpoint_files(ldm_state_dict, tmp_path_factory) -> dict[str, Path]:
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("single-file")
    files = {"safetensors": d / "tiny-sd.safetensors", "ckpt": d / "tiny-sd.ckpt"}
    save_file(ldm_state_dict, str(files["safetensors"]))
    torch.save({"state_dict": ldm_state_dict, "global_step": 1}, files["ckpt"])
    return files


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


def _assert_same_weights(bb: DiffusionBackbone, tiny_components, offset: float = 0.0) -> None:
    for name in COMPONENTS:
        ours, ref = getattr(bb, name).state_dict(), tiny_components[name].state_dict()
        assert set(ours) == set(ref), name
        for k, v in ref.items():
            expected = v + offset if v.is_floating_point() else v
            assert ours[k].dtype == expected.dtype and torch.equal(ours[k], expected), f"{name}.{k}"


# ---------------------------------------------------------------------------------- the exporter
def test_exporter_is_the_exact_inverse_of_the_diffusers_converters(tiny_components, ldm_state_dict):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet, vae, te = (tiny_components[n] for n in COMPONENTS)
    assert len(ldm_state_dict) == len(unet_to_ldm(unet)) + len(vae_to_ldm(vae)) + len(clip_to_ldm(te))
    # The real SD-1.x layout: upsamplers at output_blocks 2 (no attention), 5 and 8 (after attention).
    for key in (
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "input_blocks.3.0.op.weight",
        "middle_block.1.proj_in.weight",
        "output_blocks.11.0.skip_connection.weight",
    ):
        assert "model.diffusion_model." + key in ldm_state_dict
    assert ldm_state_dict["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in LDM
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in ldm_state_dict
    converted = {
        "unet": convert_ldm_unet_checkpoint(ldm_state_dict, unet.config),
        "vae": convert_ldm_vae_checkpoint(ldm_state_dict, vae.config),
        "text_encoder": {
            k.removeprefix("text_model.") if not hasattr(te, "text_model") else k: v
            for k, v in convert_ldm_clip_checkpoint(ldm_state_dict).items()
        },
    }
    for name in COMPONENTS:
        ref = tiny_components[name].state_dict()
        assert set(converted[name]) == set(ref), name
        assert all(torch.equal(converted[name][k], ref[k]) for k in ref), name


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_single_file_round_trip_offline(fmt, checkpoint_files, config_dir, tiny_components, tiny_backbone):
    bb = DiffusionBackbone.from_pretrained(str(checkpoint_files[fmt]), config=str(config_dir))
    _assert_same_weights(bb, tiny_components)
    assert bb.size_multiple == 16 and not bb.is_sdxl
    assert bb.dtype == torch.float32 and bb.device.type == "cpu"
    assert bb.name == str(checkpoint_files[fmt])

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    req = FeatureRequest(self_attention=True, cross_attention=True)
    got = bb.extract(x, req, prompts=["a cat", "a dog"], timestep=300)
    ref = tiny_backbone.extract(x, req, prompts=["a cat", "a dog"], timestep=300)
    assert got.self_attention and got.cross_attention and got.latent_size == (16, 16)
    assert set(got.self_attention) == set(ref.self_attention)
    for kind in ("self_attention", "cross_attention"):
        for k, v in getattr(ref, kind).items():
            torch.testing.assert_close(getattr(got, kind)[k], v, rtol=0, atol=0)
    assert torch.equal(got.token_ids, ref.token_ids)


def test_single_file_honours_torch_dtype(checkpoint_files, config_dir, tiny_components):
    bb = DiffusionBackbone.from_pretrained(
        str(checkpoint_files["safetensors"]), config=str(config_dir), torch_dtype=torch.float16
    )
    assert bb.dtype == torch.float16 and bb.vae.dtype == torch.float16
    ref = tiny_components["unet"].state_dict()
    assert all(torch.equal(v, ref[k].half()) for k, v in bb.unet.state_dict().items())


def test_weights_come_from_the_file_not_the_config_folder(ldm_state_dict, tiny_model_dir, tiny_components, tmp_path):
    """With a full diffusers folder (weights included) as config, the file's tensors still win."""
    shifted = {k: v + 1 for k, v in ldm_state_dict.items()}
    path = _save(shifted, tmp_path / "shifted.safetensors")
    bb = DiffusionBackbone.from_pretrained(str(path), config=str(tiny_model_dir))
    _assert_same_weights(bb, tiny_components, offset=1.0)


def _fake_hub_cache(tmp_path: Path, repo_id: str, folder: Path) -> None:
    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_config_as_a_cached_hub_id(checkpoint_files, config_dir, tiny_components, tmp_path):
    _fake_hub_cache(tmp_path, "someone/tiny-sd", config_dir)
    bb = DiffusionBackbone.from_pretrained(str(checkpoint_files["safetensors"]), config="someone/tiny-sd")
    _assert_same_weights(bb, tiny_components)


def test_without_config_the_inferred_hub_id_is_taken_from_the_cache(
    checkpoint_files, config_dir, tiny_components, tmp_path
):
    """diffusers infers SD 1.x from the keys; its configs load offline when cached."""
    _fake_hub_cache(tmp_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", config_dir)
    bb = DiffusionBackbone.from_pretrained(str(checkpoint_files["ckpt"]))
    _assert_same_weights(bb, tiny_components)


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_tokenizer, tmp_path_factory) -> tuple[dict, Path, Path]:
    """SDXL-shaped components whose two text encoders differ in width (8 vs 12, like 768 vs 1280:
    diffusers tells them apart by that), their config-only folder and their single file."""
    from conftest import sdxl_unet_config, tiny_scheduler, tiny_vae
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    base = dict(
        vocab_size=len(tiny_tokenizer),
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sdxl_unet_config(8, 12))  # distinct widths tell the encoders apart
    comps = dict(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=8, **base)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=12, projection_dim=12, **base)),
        tokenizer=tiny_tokenizer,
        tokenizer_2=tiny_tokenizer,
        scheduler=tiny_scheduler(),
    )
    d = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**comps).save_pretrained(d / "configs")
    for weights in (d / "configs").rglob("*.safetensors"):
        weights.unlink()
    file = _save(
        sdxl_to_ldm(comps["unet"], comps["vae"], comps["text_encoder"], comps["text_encoder_2"]),
        d / "tiny-sdxl.safetensors",
    )
    return comps, d / "configs", file


def test_sdxl_single_file_round_trip_offline(tiny_sdxl):
    comps, config, file = tiny_sdxl
    bb = DiffusionBackbone.from_pretrained(str(file), config=str(config))
    assert bb.is_sdxl
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, ref = getattr(bb, name).state_dict(), comps[name].state_dict()
        assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref), name
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    req = FeatureRequest(self_attention=True, cross_attention=True)
    got = bb.extract(x, req, prompts="a cat")
    ref = DiffusionBackbone(**comps, name="ref").extract(x, req, prompts="a cat")
    assert got.self_attention and set(got.cross_attention) == set(ref.cross_attention)
    for kind in ("self_attention", "cross_attention"):
        for k, v in getattr(ref, kind).items():
            # same weights (checked bit for bit above); the loaded and the in-memory modules may
            # still take different CPU kernels (memory layout), which differ in the last bits
            torch.testing.assert_close(getattr(got, kind)[k], v, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- errors
def test_offline_without_config_says_what_to_pass(checkpoint_files):
    with pytest.raises(ModelNotFoundError, match="`config`") as e:
        DiffusionBackbone.from_pretrained(str(checkpoint_files["safetensors"]))
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(e.value) and "offline" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        DiffusionBackbone.from_pretrained(str(checkpoint_files["safetensors"]), config="someone/not-cached")


def test_missing_or_wrong_config_folder(checkpoint_files, tmp_path):
    file = str(checkpoint_files["safetensors"])
    with pytest.raises(ModelNotFoundError, match="config folder .* not found.*`config`"):
        DiffusionBackbone.from_pretrained(file, config=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotADiffusionModelError, match="model_index.json"):
        DiffusionBackbone.from_pretrained(file, config=str(tmp_path / "empty"))
    (tmp_path / "xl" / "unet").mkdir(parents=True)
    (tmp_path / "xl" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (tmp_path / "xl" / "unet" / "config.json").write_text("{}")
    with pytest.raises(NotADiffusionModelError, match="StableDiffusionXLPipeline.*SD 1.x/2.x"):
        DiffusionBackbone.from_pretrained(file, config=str(tmp_path / "xl"))


def test_config_of_another_architecture(checkpoint_files, config_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(config_dir, other)
    cfg = json.loads((other / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [8, 8, 16, 32]
    (other / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotADiffusionModelError, match="do not fit the configs.*`config`"):
        DiffusionBackbone.from_pretrained(str(checkpoint_files["safetensors"]), config=str(other))


def test_corrupt_safetensors(checkpoint_files, config_dir, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 8)
    data = checkpoint_files["safetensors"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (garbage, truncated):
        with pytest.raises(NotADiffusionModelError, match="not a readable safetensors checkpoint") as e:
            DiffusionBackbone.from_pretrained(str(bad), config=str(config_dir))
        assert str(bad) in str(e.value) and ".safetensors/.ckpt" in str(e.value)


def test_corrupt_ckpt(config_dir, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"definitely not a pickle")
    with pytest.raises(NotADiffusionModelError, match="not a readable PyTorch checkpoint"):
        DiffusionBackbone.from_pretrained(str(bad), config=str(config_dir))
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(NotADiffusionModelError, match="not a state dict"):
        DiffusionBackbone.from_pretrained(str(tmp_path / "list.ckpt"), config=str(config_dir))


@pytest.mark.parametrize("with_config", [True, False])
def test_random_non_model_file(with_config, config_dir, tmp_path):
    path = _save({"encoder.weight": torch.randn(4, 4), "head.bias": torch.zeros(4)}, tmp_path / "x.safetensors")
    torch.save({"encoder.weight": torch.randn(4, 4)}, tmp_path / "x.ckpt")
    for file in (path, tmp_path / "x.ckpt"):
        with pytest.raises(NotADiffusionModelError, match="no UNet weights under `model.diffusion_model") as e:
            DiffusionBackbone.from_pretrained(str(file), config=str(config_dir) if with_config else None)
        assert "encoder.weight" in str(e.value) and "diffusers folder" in str(e.value)


def test_partial_checkpoints_are_refused(ldm_state_dict, config_dir, tmp_path):
    no_vae = {k: v for k, v in ldm_state_dict.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(NotADiffusionModelError, match="no VAE weights"):
        DiffusionBackbone.from_pretrained(str(_save(no_vae, tmp_path / "a.safetensors")), config=str(config_dir))
    # diffusers would leave this one text-encoder tensor on the meta device without complaint
    one_less = dict(ldm_state_dict)
    del one_less["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    with pytest.raises(NotADiffusionModelError, match="lacks 1 text_encoder weight.*final_layer_norm"):
        DiffusionBackbone.from_pretrained(str(_save(one_less, tmp_path / "b.safetensors")), config=str(config_dir))
    one_less = dict(ldm_state_dict)
    del one_less["model.diffusion_model.out.2.weight"]
    with pytest.raises(NotADiffusionModelError, match="partial"):
        DiffusionBackbone.from_pretrained(str(_save(one_less, tmp_path / "c.safetensors")), config=str(config_dir))
    no_text = {k: v for k, v in ldm_state_dict.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(NotADiffusionModelError, match="neither in the file nor in the config folder"):
        DiffusionBackbone.from_pretrained(str(_save(no_text, tmp_path / "d.safetensors")), config=str(config_dir))


# ---------------------------------------------------------------------------------- CLI
def test_cli_segment_with_a_single_file(checkpoint_files, config_dir, tmp_path, capsys):
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(img),
            "--model",
            str(checkpoint_files["safetensors"]),
            "--model-config",
            str(config_dir),
            "--size",
            "32",
            "--out",
            str(out),
            "--no-progress",
            "--seed",
            "0",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out / "photo.labels.png")).shape == (40, 48)  # the whole image, its own size
    assert sum(s["area"] for s in json.loads((out / "photo.json").read_text())["segments"]) == 40 * 48

    rc = main(
        [
            "segment",
            str(img),
            "--model",
            str(checkpoint_files["ckpt"]),
            "--size",
            "32",
            "--out",
            str(tmp_path / "out2"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--model-config" in err and not (tmp_path / "out2" / "photo.json").exists()
