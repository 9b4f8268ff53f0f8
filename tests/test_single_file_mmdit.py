"""Single-file diffusion transformers (SD3, SD3.5, FLUX.1 original layouts) with a pipeline folder.

The tiny transformers of `conftest.tiny_mmdit_pipelines` are exported to their original layout
by `tests/_mmdit_export.py` (the inverse of diffusers' converters) and saved as one
`.safetensors` file; the pipeline folder, stripped of its transformer weights, is the `config`.
`load_backbone(file, config=folder)` must give an `MMDiTBackbone` whose transformer equals the
original bit for bit, offline.

diffusers' FLUX converter splits a single block's fused ``linear1`` by FLUX.1's width (3072),
written into the converter; `flux_width` makes that split follow the tensor instead (its sizes
scaled, nothing else changed), so that a tiny FLUX file goes through diffusers' own converter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _mmdit_export import PREFIX, flux_to_original, sd3_to_original
from conftest import tiny_mmdit_pipelines
from PIL import Image

from diffuseg.backbone import DiffusionBackbone, ModelNotFoundError, NotADiffusionModelError
from diffuseg.backbone.load import load_backbone
from diffuseg.backbone.mmdit import MMDiTBackbone
from diffuseg.backbone.single_file import transformer_pipeline
from diffuseg.cli import main

diffusers = pytest.importorskip("diffusers")
FAMILIES = ("sd3", "sd35", "flux")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, and an empty Hugging Face cache unless a test fills one."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


class _ScaledSplit:
    """``torch`` as diffusers' single_file_utils sees it, but a split by FLUX.1's sizes follows
    the tensor's own width (q, k, v, mlp = 1:1:1:4 of it, as in FLUX.1)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def split(tensor, sizes, dim=0):
        if isinstance(sizes, (tuple, list)) and list(sizes) == [3072, 3072, 3072, 12288]:
            w = tensor.shape[dim] // 7
            sizes = (w, w, w, 4 * w)
        return torch.split(tensor, sizes, dim=dim)


@pytest.fixture
def flux_width(monkeypatch):
    from diffusers.loaders import single_file_utils

    monkeypatch.setattr(single_file_utils, "torch", _ScaledSplit())


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict]:
    """family -> ref (the transformer's state dict), config (the pipeline folder without
    transformer weights), file (the original-layout transformer), full (the whole folder)."""
    root = tmp_path_factory.mktemp("mmdit-single")
    out = {}
    for family, pipe in tiny_mmdit_pipelines(root).items():
        pipe.save_pretrained(root / family)
        config = root / f"{family}-config"
        shutil.copytree(root / family, config)
        for weights in (config / "transformer").glob("*.safetensors"):
            weights.unlink()
        export = flux_to_original if family == "flux" else sd3_to_original
        out[family] = {
            "ref": pipe.transformer.state_dict(),
            "config": config,
            "full": root / family,
            "file": _save(export(pipe.transformer), root / f"{family}.safetensors"),
            "original": export(pipe.transformer),
        }
    return out


def _same_transformer(backbone: MMDiTBackbone, ref: dict[str, torch.Tensor], dtype=torch.float32) -> None:
    ours = backbone.transformer.state_dict()
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k].dtype == dtype and torch.equal(ours[k], v.to(dtype)), k


# ---------------------------------------------------------------------------------- the exporter
@pytest.mark.parametrize("family", FAMILIES)
def test_exporter_is_the_exact_inverse_of_the_diffusers_converters(models, family, flux_width):
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    original = models[family]["original"]
    if family == "flux":
        assert "double_blocks.1.img_attn.qkv.weight" in original and "single_blocks.1.linear1.bias" in original
        assert original["single_blocks.0.linear1.weight"].shape == (7 * 32, 32)  # q, k, v and the 4x MLP
        converted = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    else:
        assert f"{PREFIX}joint_blocks.0.x_block.attn.qkv.weight" in original
        assert f"{PREFIX}joint_blocks.2.context_block.attn.proj.weight" not in original  # context_pre_only
        assert (f"{PREFIX}joint_blocks.0.x_block.attn2.qkv.weight" in original) == (family == "sd35")
        assert (f"{PREFIX}joint_blocks.1.context_block.attn.ln_k.weight" in original) == (family == "sd35")
        converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    ref = models[family]["ref"]
    assert set(converted) == set(ref)
    assert all(torch.equal(converted[k], ref[k]) for k in ref)


def test_the_family_is_read_from_the_keys(models):
    assert transformer_pipeline(models["sd35"]["original"]) == "StableDiffusion3Pipeline"
    assert transformer_pipeline(models["flux"]["original"]) == "FluxPipeline"
    assert transformer_pipeline(_flux_prefixed(models)) == "FluxPipeline"
    assert transformer_pipeline({"model.diffusion_model.input_blocks.0.0.weight", "vae.x"}) is None


def _flux_prefixed(models) -> dict[str, torch.Tensor]:
    return {PREFIX + k: v for k, v in models["flux"]["original"].items()}


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", [*FAMILIES, "flux-prefixed"])
def test_single_file_round_trip_offline(models, family, flux_width, tmp_path):
    base = family.split("-")[0]
    file = models[base]["file"]
    if family == "flux-prefixed":  # as ComfyUI saves FLUX
        file = _save(_flux_prefixed(models), tmp_path / "flux-comfy.safetensors")
    backbone = load_backbone(str(file), config=str(models[base]["config"]))
    assert isinstance(backbone, MMDiTBackbone) and backbone.family == base and backbone.name == str(file)
    _same_transformer(backbone, models[base]["ref"])
    full = MMDiTBackbone.from_pretrained(models[base]["full"])  # the rest is the folder's
    assert all(torch.equal(a, b) for a, b in zip(backbone.vae.parameters(), full.vae.parameters(), strict=True))
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"


@pytest.mark.parametrize("family", ["sd35", "flux"])
def test_single_file_honours_torch_dtype(models, family, flux_width):
    backbone = load_backbone(str(models[family]["file"]), config=str(models[family]["config"]), dtype=torch.bfloat16)
    _same_transformer(backbone, models[family]["ref"], torch.bfloat16)
    assert backbone.vae.dtype == torch.bfloat16 and backbone.pipe.text_encoder.dtype == torch.bfloat16


def test_drop_t5_with_an_sd3_file(models, flux_width):
    backbone = load_backbone(str(models["sd3"]["file"]), config=str(models["sd3"]["config"]), drop_t5=True)
    assert backbone.pipe.text_encoder_3 is None and backbone.pipe.tokenizer_3 is not None
    _same_transformer(backbone, models["sd3"]["ref"])
    embeds = backbone.encode_prompts(["a cat"]).embeds
    assert embeds.shape[1] == 16 + 256 and not embeds[:, 16:].any()  # T5's columns are zeros
    with pytest.raises(ValueError, match="`drop_t5` applies to SD3 pipelines; .* holds a FluxPipeline"):
        load_backbone(str(models["flux"]["file"]), config=str(models["flux"]["config"]), drop_t5=True)


def _fake_hub_cache(tmp_path: Path, repo_id: str, folder: Path) -> None:
    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_config_as_a_cached_hub_id_and_an_uncached_one_offline(models, tmp_path):
    _fake_hub_cache(tmp_path, "someone/tiny-sd35", models["sd35"]["config"])
    backbone = load_backbone(str(models["sd35"]["file"]), config="someone/tiny-sd35")
    _same_transformer(backbone, models["sd35"]["ref"])
    with pytest.raises(ModelNotFoundError, match=r"`config` 'someone/nothing' is not available.*StableDiffusion3"):
        load_backbone(str(models["sd35"]["file"]), config="someone/nothing")


# ---------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("family", ["sd35", "flux"])
def test_cli_segments_with_a_transformer_file_and_its_pipeline_folder(models, family, flux_width, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((30, 44, 3)) * 255).astype(np.uint8)).save(photo)
    argv = ["segment", str(photo), "--model", str(models[family]["file"]), "--method", "diffseg", "--size", "32"]
    out = tmp_path / "out"
    assert main([*argv, "--model-config", str(models[family]["config"]), "--out", str(out), "--no-progress"]) == 0
    assert np.asarray(Image.open(out / "photo.labels.png")).shape == (30, 44)  # the image's own size
    assert sum(s["area"] for s in json.loads((out / "photo.json").read_text())["segments"]) == 30 * 44
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    pipeline = "FluxPipeline" if family == "flux" else "StableDiffusion3Pipeline"
    err = capsys.readouterr().err
    assert "--model-config is needed" in err and pipeline in err and not (tmp_path / "o2" / "photo.json").exists()


# ---------------------------------------------------------------------------------- errors
def test_without_config_the_pipeline_folder_is_asked_for(models):
    for family, pipeline in (("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")):
        with pytest.raises(ValueError, match=f"`config` is needed: .* transformer of a {pipeline}") as e:
            load_backbone(str(models[family]["file"]))
        assert "transformer/config.json" in str(e.value)
    with pytest.raises(NotADiffusionModelError, match=r"holds a diffusion transformer .*load_backbone"):
        DiffusionBackbone.from_pretrained(str(models["sd3"]["file"]), config=str(models["sd3"]["config"]))


def test_a_file_of_another_family_than_the_folder(models, tiny_model_dir):
    with pytest.raises(NotADiffusionModelError, match=r"of a FluxPipeline .* is a StableDiffusion3Pipeline"):
        load_backbone(str(models["flux"]["file"]), config=str(models["sd3"]["config"]))
    with pytest.raises(NotADiffusionModelError, match=r"`config` .* holds a StableDiffusionPipeline, but .* SD3"):
        load_backbone(str(models["sd3"]["file"]), config=str(tiny_model_dir))


def test_a_file_without_a_transformer_with_a_pipeline_folder(models, tmp_path):
    path = _save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(NotADiffusionModelError, match=r"holds no FLUX.1 transformer .*e\.g\. encoder\.weight"):
        load_backbone(str(path), config=str(models["flux"]["config"]))


def test_blocks_the_config_does_not_have(models):
    with pytest.raises(NotADiffusionModelError, match=r"`dual_attention_layers` is \[\] there, \[0\] in the file") as e:
        load_backbone(str(models["sd35"]["file"]), config=str(models["sd3"]["config"]))
    assert "`qk_norm` is False there, True in the file" in str(e.value)


def _edited_config(models, family: str, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / f"{family}-edited"
    shutil.copytree(models[family]["config"], folder)
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


def test_weights_that_do_not_fit_the_config(models, tmp_path, flux_width):
    fewer = _edited_config(models, "flux", tmp_path, num_single_layers=1, guidance_embeds=False)
    with pytest.raises(NotADiffusionModelError, match=r"`num_single_layers` is 1 there, 2 in the file") as e:
        load_backbone(str(models["flux"]["file"]), config=str(fewer))
    assert "`guidance_embeds` is False there, True in the file" in str(e.value)
    wider = _edited_config(models, "sd3", tmp_path, joint_attention_dim=48)
    with pytest.raises(NotADiffusionModelError, match=r"context_embedder.weight: the config asks for \[32, 48\]"):
        load_backbone(str(models["sd3"]["file"]), config=str(wider))


def test_a_partial_file_names_the_missing_tensor(models, tmp_path):
    partial = dict(models["sd3"]["original"])
    del partial[f"{PREFIX}joint_blocks.1.x_block.mlp.fc2.weight"]
    path = _save(partial, tmp_path / "partial.safetensors")
    with pytest.raises(NotADiffusionModelError, match=r"lacks the tensor 'joint_blocks.1.x_block.mlp.fc2.weight'"):
        load_backbone(str(path), config=str(models["sd3"]["config"]))


def test_a_truncated_or_garbage_file(models, tmp_path):
    data = models["flux"]["file"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 8)
    for bad in (truncated, garbage):
        with pytest.raises(NotADiffusionModelError, match="not a readable safetensors checkpoint") as e:
            load_backbone(str(bad), config=str(models["flux"]["config"]))
        assert str(bad) in str(e.value)


def test_diffusers_flux_converter_width_is_explained(models):
    """Without `flux_width`, diffusers' converter cannot split a 32-wide FLUX file."""
    with pytest.raises(NotADiffusionModelError, match=r"FLUX.1's width 3072 .* this transformer is 32 wide"):
        load_backbone(str(models["flux"]["file"]), config=str(models["flux"]["config"]))
