"""`MMDiTBackbone` on tiny SD3, SD3.5 and FLUX pipeline folders built from configs: loading,
sizes, flow-matching noise, prompt encoding (with and without SD3's T5) and one recorded pass."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_mmdit_pipelines

from diffuseg.backbone.joint_attention import JointRequest
from diffuseg.backbone.mmdit import MMDiTBackbone, mmdit_family
from diffuseg.backbone.noise_levels import flow_sigma, sd_timestep
from diffuseg.labeling.spans import part_columns

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("diffusers.models.transformers.transformer_flux").FluxAttnProcessor  # noqa: B018

SIZE = 32  # input pixels: VAE factor 2 -> 16x16 latents -> 8x8 tokens (patch 2)


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """family -> a saved tiny pipeline folder."""
    root = tmp_path_factory.mktemp("mmdit")
    pipes = tiny_mmdit_pipelines(root)
    for family, pipe in pipes.items():
        pipe.save_pretrained(root / family)
    return {family: root / family for family in pipes}


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
def test_a_folder_loads_and_one_pass_records_the_requested_layers(pipeline_dirs, family):
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs[family])
    assert backbone.family == family and backbone.size_multiple == 4
    layers = backbone.layers()
    request = JointRequest((layers[0], layers[-1]), (layers[0], layers[-1]))

    def run():
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        images, prompts = [_image(0), _image(1)], ["a cat", "a dog"]
        return backbone.extract(images, request, prompts=prompts, timestep=500, image_size=SIZE, generator=gens)

    features = run()
    n = (SIZE // 2 // 2) ** 2  # 16x16 latents, 2x2 tokens
    for layer in request.layers:
        assert features.layer_sizes[layer] == (8, 8)
        i2i = features.self_attention[layer]
        assert i2i.shape == (2, n, n) and torch.allclose(i2i.sum(-1), torch.ones(2, n), atol=1e-5)
    text = features.cross_attention[layers[0]].shape[-1]
    assert text == (16 + 256 if family != "flux" else 512)  # SD3: CLIP then T5 tokens; FLUX: T5
    assert features.images.shape == (2, 3, SIZE, SIZE) and features.latent_size == (16, 16)
    assert torch.equal(run().self_attention[layers[0]], features.self_attention[layers[0]])  # seeded


def test_flow_matching_noise_has_the_signal_to_noise_ratio_of_sds_timestep(pipeline_dirs):
    """Known answer: at every t, (1 - sigma) / sigma = sqrt(abar_t / (1 - abar_t)) of SD's
    scaled-linear schedule (diffusers' DDPMScheduler builds the same abar)."""
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"])
    abar = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    x, noise = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    for t in (0, 100, 300, 500, 999):
        signal = float(backbone.add_noise(x, noise, t)[0, 0, 0, 0])  # 1 - sigma
        sigma = float(backbone.add_noise(torch.zeros_like(x), torch.ones_like(x), t)[0, 0, 0, 0])
        assert signal + sigma == pytest.approx(1.0)
        assert signal / sigma == pytest.approx(float((abar[t] / (1 - abar[t])) ** 0.5), rel=1e-4)
    assert sd_timestep(flow_sigma(372)) == 372 and sd_timestep(0.515) == 372  # Seg4Diff's SD3 sigma
    with pytest.raises(ValueError, match="`timestep` must be an int in"):
        flow_sigma(1000)


def test_sd3_without_t5_has_zero_t5_tokens(pipeline_dirs):
    full = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"])
    light = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"], drop_t5=True)
    assert light.pipe.text_encoder_3 is None
    embeds = light.encode_prompts(["a cat"]).embeds
    full_embeds = full.encode_prompts(["a cat"]).embeds
    assert embeds.shape == full_embeds.shape
    assert torch.equal(embeds[:, :16], full_embeds[:, :16]) and not embeds[:, 16:].any()
    with pytest.raises(ValueError, match="`drop_t5` applies to SD3"):
        MMDiTBackbone.from_pretrained(pipeline_dirs["flux"], drop_t5=True)


def test_bad_sizes_timesteps_and_folders_are_named(pipeline_dirs, tmp_path):
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs["flux"])
    with pytest.raises(ValueError, match=r"`image_size` 30 is not a multiple of 4 .* nearest that fit are 28 and 32"):
        backbone.extract(_image(), JointRequest((backbone.layers()[0],)), image_size=30)
    with pytest.raises(ValueError, match=r"`timestep` must be an int in \[0, 1000\)"):
        backbone.extract(_image(), JointRequest((backbone.layers()[0],)), timestep=1000)
    assert backbone.max_size is None  # FLUX: rotary positions
    sd3 = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"])  # pos_embed_max_size 32, 4 px tokens
    assert sd3.max_size == 128 and sd3.check_size(128) == 128
    with pytest.raises(ValueError, match=r"`image_size` 132 is larger than .* at most 128 \(32 tokens of 4 px\)"):
        sd3.check_size(132)
    with pytest.raises(ValueError, match="not an attention layer"):
        backbone.extract(_image(), JointRequest(("transformer_blocks.9.attn",)), image_size=SIZE)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        MMDiTBackbone.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ValueError, match="diffusion transformers supported: StableDiffusion3Pipeline, FluxPipeline"):
        MMDiTBackbone.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="supported: SD3Transformer2DModel"):
        mmdit_family(torch.nn.Linear(1, 1))


def test_flux_dev_guidance_and_the_prediction_shape(pipeline_dirs):
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs["flux"])
    prompt = backbone.encode_prompts(["a cat"])
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = backbone.predict(latents, 300, prompt)  # guidance_embeds: the documented 3.5
    assert out.shape == latents.shape and torch.isfinite(out).all()
    noise = torch.randn_like(latents)
    assert torch.equal(backbone.prediction_target(latents, noise, 300), noise - latents)  # the flow velocity


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_class_columns_are_found_in_clip_and_t5_text(pipeline_dirs, family):
    """The tiny tokenizer spells words letter by letter: every name is multi-token."""
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs[family])
    prompt = "cat dog cat"  # fits the tiny CLIP budget of 14 tokens
    parts = backbone.text_parts(prompt)
    embeds = backbone.encode_prompts([prompt]).embeds
    assert sum(len(p.token_ids) for p in parts) == embeds.shape[1]  # the parts tile the text axis
    cat, dog, cow = part_columns(parts, ["cat", "dog", "cow"])
    assert cow == []
    for part in parts:
        ids = part.token_ids
        cat_ids = part.tokenizer("cat", add_special_tokens=False).input_ids
        in_part = [c - part.offset for c in cat if part.offset <= c < part.offset + len(ids)]
        assert len(in_part) == 2 * len(cat_ids)  # the word twice, each occurrence whole
        assert [ids[i] for i in in_part] == cat_ids * 2
        assert len([c for c in dog if part.offset <= c < part.offset + len(ids)]) == len(cat_ids)
    if family == "sd3":
        assert [p.encoder for p in parts] == ["clip", "t5"] and parts[1].offset == 16
        only_clip = part_columns(parts, ["cat"], encoders=("clip",))[0]
        assert only_clip == [c for c in cat if c < 16]
        light = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"], drop_t5=True)
        assert [p.encoder for p in light.text_parts(prompt)] == ["clip"]
        with pytest.raises(ValueError, match="`encoders`"):
            part_columns(light.text_parts(prompt), ["cat"], encoders=("t5",))


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
def test_diffseg_segments_a_whole_photo_from_the_cli_and_the_api(pipeline_dirs, family, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from diffuseg.backbone.load import load_backbone
    from diffuseg.backbone.protocol import Backbone
    from diffuseg.cli import main
    from diffuseg.segmenter import Segmenter

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((30, 44, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = ["segment", str(photo), "--model", str(pipeline_dirs[family]), "--method", "diffseg", "--size", "32"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    labels = np.asarray(Image.open(out / "photo.labels.png"))
    record = json.loads((out / "photo.json").read_text())
    assert labels.shape == (30, 44) and record["meta"]["model_size"] == [20, 32]  # the whole photo, aspect kept
    backbone = load_backbone(str(pipeline_dirs[family]))
    assert isinstance(backbone, MMDiTBackbone) and isinstance(backbone, Backbone) and backbone.family == family
    seg = Segmenter(backbone, "diffseg", image_size=32)(str(photo), generator=torch.Generator().manual_seed(0))
    assert seg.in_input_frame().labels.shape == (30, 44)


def test_load_backbone_drops_t5_only_where_there_is_one(pipeline_dirs, tiny_model_dir):
    from diffuseg.backbone.load import load_backbone

    assert load_backbone(str(pipeline_dirs["sd3"]), drop_t5=True).pipe.text_encoder_3 is None
    with pytest.raises(ValueError, match="`drop_t5` applies to SD3"):
        load_backbone(str(tiny_model_dir), drop_t5=True)


def test_token_weights_move_only_the_weighted_columns_toward_the_empty_prompt(pipeline_dirs):
    backbone = MMDiTBackbone.from_pretrained(pipeline_dirs["sd3"])
    plain = backbone.encode_prompts(["cat dog"]).embeds
    empty = backbone.encode_prompts([""]).embeds[0]
    weighted = backbone.encode_prompts(["cat dog"], token_weights=[[(2, 1.21)]]).embeds
    assert torch.allclose(weighted[0, 2], empty[2] + 1.21 * (plain[0, 2] - empty[2]), atol=1e-6)
    others = [i for i in range(plain.shape[1]) if i != 2]
    assert torch.equal(weighted[0, others], plain[0, others])
    with pytest.raises(ValueError, match="`token_weights` positions must index the first 16"):
        backbone.encode_prompts(["cat"], token_weights=[[(20, 2.0)]])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_diffsegmenter_names_the_classes_on_a_diffusion_transformer(pipeline_dirs, family, tmp_path):
    import json

    from diffuseg.cli import main

    out = tmp_path / "out"
    argv = ["segment", "examples/scene.png", "--model", str(pipeline_dirs[family]), "--method", "diffsegmenter"]
    argv += ["--classes", "sky,grass", "--template", "{class}", "--size", "32", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    record = json.loads((out / "scene.json").read_text())
    assert record["names"] == ["sky", "grass"] and record["height"] == record["width"] == 128


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
def test_seg4diff_runs_on_a_diffusion_transformer_and_names_a_bad_layer(pipeline_dirs, family, tmp_path, capsys):
    from diffuseg.cli import main

    out = tmp_path / "out"
    argv = ["segment", "examples/chelsea.jpg", "--model", str(pipeline_dirs[family]), "--method", "seg4diff"]
    assert main([*argv, "--layer", "1", "--size", "32", "--out", str(out), "--no-progress"]) == 0
    assert main([*argv, "--layer", "7", "--size", "32", "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    last = 3 if family == "flux" else 2  # FLUX: 2 dual + 2 single blocks; SD3.5's attn2 sees no text
    assert f"--layer 7 is outside this model's image->text layers 0..{last}" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "diffcut"],
        ["--method", "maskdiffusion-kmeans"],
        ["--method", "maskdiffusion", "--attention-levels", "0", "--classes", "sky,grass", "--template", "{class}"],
        ["--method", "diffseg", "--label", "classes", "--classes", "sky,grass", "--label-template", "{class}"],
    ],
    ids=["diffcut", "maskdiffusion-kmeans", "maskdiffusion", "diffseg-naming"],
)
def test_every_training_free_method_runs_on_a_diffusion_transformer(pipeline_dirs, family, flags, tmp_path):
    import json

    from diffuseg.cli import main

    out = tmp_path / "out"
    argv = ["segment", "examples/chelsea.jpg", "--model", str(pipeline_dirs[family]), *flags, "--size", "32"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "chelsea.json").read_text())
    assert (record["height"], record["width"]) == (300, 451)  # the whole photo at its own size


def test_seg_diffusion_refuses_a_diffusion_transformer(pipeline_dirs):
    from diffuseg.backbone.load import load_backbone
    from diffuseg.methods import get_method
    from diffuseg.plan import Query

    backbone = load_backbone(str(pipeline_dirs["sd35"]))
    with pytest.raises(ValueError, match=r"Seg-diffusion needs a UNet model .*family 'sd35'"):
        get_method("segdiffusion").plan(get_method("segdiffusion").make_config(), Query(classes="cat"), backbone)


def test_drop_t5_flag_segments_without_t5_and_is_refused_where_there_is_none(pipeline_dirs, tmp_path, capsys):
    from diffuseg.cli import main

    argv = ["segment", "examples/scene.png", "--method", "diffseg", "--size", "32", "--drop-t5", "--no-progress"]
    assert main([*argv, "--model", str(pipeline_dirs["sd3"]), "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--model", str(pipeline_dirs["flux"]), "--out", str(tmp_path / "b")]) == 2
    assert "--drop-t5 applies to SD3 pipelines" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_bf16_weights_record_float32_maps(pipeline_dirs, family):
    from diffuseg.backbone.load import load_backbone

    backbone = load_backbone(str(pipeline_dirs[family]), dtype="bf16")
    assert backbone.dtype == torch.bfloat16
    layer = backbone.layers()[0]
    features = backbone.extract(_image(), JointRequest((layer,), (layer,)), image_size=SIZE)
    i2i = features.self_attention[layer]
    assert i2i.dtype == torch.float32 and torch.isfinite(i2i).all()
    assert torch.allclose(i2i.sum(-1), torch.ones_like(i2i[..., 0]), atol=1e-4)


def test_a_hub_id_in_the_local_cache_loads_a_diffusion_transformer(pipeline_dirs, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as c

    from diffuseg.backbone.load import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-sd3"
    shutil.copytree(pipeline_dirs["sd3"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    backbone = load_backbone("someone/tiny-sd3")
    assert isinstance(backbone, MMDiTBackbone) and backbone.name == "someone/tiny-sd3"


def test_a_rerun_without_t5_does_not_count_outputs_made_with_it_as_done(pipeline_dirs, tmp_path, capsys):
    import json

    from diffuseg.cli import main

    argv = ["segment", "examples/scene.png", "--model", str(pipeline_dirs["sd3"]), "--method", "diffseg"]
    argv += ["--size", "32", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--drop-t5"]) == 0
    assert json.loads((tmp_path / "scene.json").read_text())["meta"]["drop_t5"] is True
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 2
    assert "--drop-t5 True (this run: False)" in capsys.readouterr().err
    assert main([*argv, "--skip-existing", "--drop-t5"]) == 0


def test_seg_diffusion_goes_by_the_unet_families_not_every_preset_family():
    import types

    from diffuseg.segdiffusion import require_unet

    for family in ("sd3", "sd35", "flux"):  # preset families, but not UNet ones, even with a `unet`
        with pytest.raises(ValueError, match=f"family '{family}'"):
            require_unet(types.SimpleNamespace(unet=object(), family=family, name="m"))
