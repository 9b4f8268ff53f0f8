"""Backbone loading (temp-dir round trips), preprocessing sizes, encoders and the one pass."""

from __future__ import annotations

import json

import pytest
import torch

from diffuseg.backbone import (
    DiffusionBackbone,
    FeatureRequest,
    ModelNotFoundError,
    NotADiffusionModelError,
)
from diffuseg.segmenter import Segmenter


def test_round_trip_through_a_diffusers_folder(tiny_model_dir, tiny_components):
    bb = DiffusionBackbone.from_pretrained(str(tiny_model_dir))
    assert bb.vae_scale_factor == 2 and bb.unet_scale_factor == 8 and bb.size_multiple == 16
    for name in ("unet", "vae", "text_encoder"):
        ours, ref = getattr(bb, name).state_dict(), tiny_components[name].state_dict()
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert bb.device.type == "cpu" and bb.dtype == torch.float32


def test_round_trip_sdxl_folder(tiny_sdxl_components, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**tiny_sdxl_components).save_pretrained(tmp_path, safe_serialization=True)
    bb = DiffusionBackbone.from_pretrained(str(tmp_path))
    assert bb.is_sdxl and bb.text_encoder_2 is not None
    f = bb.extract(torch.rand(1, 3, 32, 32), FeatureRequest(self_attention=True))
    assert f.self_attention and f.latent_size == (16, 16)


def test_a_loaded_pipeline_is_handed_over_as_it_is(tiny_components, tiny_model_dir, quadrant_image):
    """`from_pipeline` wraps a user's diffusers pipeline (its modules, no copies) and segments
    exactly as `from_components` with the same parts and `from_pretrained` of the saved folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    wrapped = DiffusionBackbone.from_pipeline(pipe)
    assert wrapped.unet is pipe.unet and wrapped.vae is pipe.vae and wrapped.text_encoder is pipe.text_encoder
    assert wrapped.tokenizer is pipe.tokenizer and wrapped.scheduler is pipe.scheduler
    assert wrapped.text_encoder_2 is None and wrapped.name == "StableDiffusionPipeline"
    built = DiffusionBackbone.from_components(**tiny_components)
    loaded = DiffusionBackbone.from_pretrained(str(tiny_model_dir))
    assert wrapped.family == built.family == loaded.family
    for method in ("diffseg", "diffcut"):
        labels = [
            Segmenter(bb, method, image_size=32)(quadrant_image, generator=torch.Generator().manual_seed(0)).labels
            for bb in (wrapped, built, loaded)
        ]
        assert torch.equal(labels[0], labels[1]) and torch.equal(labels[0], labels[2]), method


def test_a_loaded_sdxl_pipeline_is_handed_over_with_both_encoders(tiny_sdxl_components):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components)
    wrapped = DiffusionBackbone.from_pipeline(pipe)
    assert wrapped.is_sdxl and wrapped.text_encoder_2 is pipe.text_encoder_2 and wrapped.tokenizer_2 is pipe.tokenizer_2
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    request = FeatureRequest(self_attention=True)
    ours = wrapped.extract(x, request, "a cat").self_attention
    ref = DiffusionBackbone.from_components(**tiny_sdxl_components).extract(x, request, "a cat").self_attention
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_not_a_model_and_missing_model(tmp_path, monkeypatch):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(NotADiffusionModelError, match="not a diffusers"):
        DiffusionBackbone.from_pretrained(str(tmp_path / "random"))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(NotADiffusionModelError):
        DiffusionBackbone.from_pretrained(str(tmp_path / "x.txt"))
    with pytest.raises(ModelNotFoundError, match="`model`"):
        DiffusionBackbone.from_pretrained(str(tmp_path / "does-not-exist"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="`model`"):
        DiffusionBackbone.from_pretrained("someone/not-cached-model")


def test_hub_id_resolved_from_local_cache(tiny_model_dir, tmp_path, monkeypatch):
    """A hub id found in the local Hugging Face cache loads offline."""
    import shutil

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    bb = DiffusionBackbone.from_pretrained("someone/tiny-sd")
    assert bb.size_multiple == 16


def test_timestep_range_checked(tiny_backbone):
    with pytest.raises(ValueError, match="timestep"):
        tiny_backbone.extract(torch.rand(1, 3, 32, 32), FeatureRequest(self_attention=True), timestep=1000)
    with pytest.raises(ValueError, match="timestep"):
        tiny_backbone.extract(torch.rand(1, 3, 32, 32), FeatureRequest(self_attention=True), timestep=-1)


def test_batch_in_one_pass_equals_single_images(tiny_backbone):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    req = FeatureRequest(self_attention=True)
    both = tiny_backbone.extract(x, req, prompts=["a cat", "a dog"])
    one = tiny_backbone.extract(x[1:], req, prompts=["a dog"])
    for k in one.self_attention:
        torch.testing.assert_close(both.self_attention[k][1:], one.self_attention[k], atol=1e-5, rtol=1e-4)
    assert both.tokens[0][:5] == ["<|startoftext|>", "a</w>", "c", "a", "t</w>"]
    assert both.token_ids.shape == (2, 16)


def test_noise_uses_the_generator(tiny_backbone):
    x = torch.rand(2, 3, 32, 32)
    req = FeatureRequest(self_attention=("mid_block*",))

    def run(seed, shared=False):
        g = torch.Generator().manual_seed(seed)
        return tiny_backbone.extract(x, req, timestep=500, add_noise=True, shared_noise=shared, generator=g)

    a, b, c = run(0), run(0), run(1)
    key = next(iter(a.self_attention))
    assert torch.equal(a.self_attention[key], b.self_attention[key])
    assert not torch.equal(a.self_attention[key], c.self_attention[key])
    same = run(0, shared=True)
    x2 = torch.cat([x[:1], x[:1]])
    g = torch.Generator().manual_seed(0)
    twin = tiny_backbone.extract(x2, req, timestep=500, add_noise=True, shared_noise=True, generator=g)
    assert torch.allclose(twin.self_attention[key][0], twin.self_attention[key][1])
    assert same.self_attention[key].shape[0] == 2


def test_latent_sample_and_vae_scaling(tiny_backbone):
    x = torch.rand(1, 3, 32, 32)
    mean = tiny_backbone.encode_images(x)
    raw = tiny_backbone.vae.encode(x * 2 - 1).latent_dist.mean
    torch.testing.assert_close(mean, raw * tiny_backbone.vae.config.scaling_factor)
    s1 = tiny_backbone.encode_images(x, "sample", torch.Generator().manual_seed(0))
    s2 = tiny_backbone.encode_images(x, "sample", torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and not torch.equal(s1, mean)
    with pytest.raises(ValueError, match="latent_mode"):
        tiny_backbone.encode_images(x, "mode")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_records_float32(tiny_components, dtype):
    import copy

    parts = copy.deepcopy(tiny_components)
    bb = DiffusionBackbone(**parts).to("cpu", dtype)
    assert bb.dtype == dtype
    try:
        f = bb.extract(torch.rand(1, 3, 32, 32), FeatureRequest(self_attention=True))
    except RuntimeError as e:  # some CPU builds lack half kernels for conv
        pytest.skip(f"{dtype} not supported on this CPU build: {e}")
    for v in f.self_attention.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        torch.testing.assert_close(v.sum(-1), torch.ones_like(v.sum(-1)), atol=2e-2, rtol=0)


def test_segmenter_reuses_the_unet_pass(tiny_backbone, quadrant_image):
    calls = []
    handle = tiny_backbone.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        seg = Segmenter(tiny_backbone, "diffseg", image_size=32)
        first = seg(quadrant_image)
        assert len(calls) == 1
        seg.resegment(kl_thresholds=(0.3, 0.3, 0.3))
        seg.resegment(num_anchors_per_side=4, refine=True)
        assert len(calls) == 1 and seg.model_calls == 1
        seg.resegment(timestep=100)  # changes the pass: runs the UNet again
        assert len(calls) == 2
        assert first.labels.shape == (32, 32)
        assert json.dumps(first.meta)  # JSON-serialisable
    finally:
        handle.remove()


def test_segmenter_batches(tiny_backbone, quadrant_image):
    calls = []
    handle = tiny_backbone.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        seg = Segmenter(tiny_backbone, "diffseg", batch_size=3, image_size=32)
        out = seg.segment_batch([quadrant_image] * 5)
    finally:
        handle.remove()
    assert len(out) == 5 and len(calls) == 2
    assert all(torch.equal(out[0].labels, o.labels) for o in out)


def test_sd2_shaped_v_prediction_folder(tiny_components, tmp_path):
    """SD 2.x shape: linear projections, per-block head dims, v-prediction scheduler."""
    from conftest import sd1_unet_config
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    cfg = dict(sd1_unet_config(), use_linear_projection=True, attention_head_dim=(2, 2, 4, 4))
    torch.manual_seed(0)
    parts = dict(
        tiny_components,
        unet=UNet2DConditionModel(**cfg),
        scheduler=DDPMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear"),
    )
    StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(tmp_path, safe_serialization=True)
    bb = DiffusionBackbone.from_pretrained(str(tmp_path))
    assert bb.scheduler.config.prediction_type == "v_prediction"
    f = bb.extract(torch.rand(1, 3, 48, 48), FeatureRequest(self_attention=True), timestep=999)
    assert sorted(f.by_resolution()) == [(3, 3), (6, 6), (12, 12), (24, 24)]


def test_float16_keeps_a_force_upcast_vae_in_float32(tiny_components):
    import copy

    from diffusers import AutoencoderKL

    parts = copy.deepcopy(tiny_components)
    vae = parts["vae"]
    parts["vae"] = AutoencoderKL.from_config({**vae.config, "force_upcast": True})
    bb = DiffusionBackbone(**parts).to("cpu", torch.float16)
    assert bb.dtype == torch.float16 and next(bb.vae.parameters()).dtype == torch.float32
    latents = bb.encode_images(torch.rand(1, 3, 32, 32))
    assert latents.dtype == torch.float16 and torch.isfinite(latents).all()


def test_default_size_is_the_models_native_resolution(tiny_backbone, tiny_sdxl_backbone, quadrant_image):
    assert tiny_backbone.native_size == 16 * 2  # unet.sample_size x VAE factor (SD 1.5: 64 x 8 = 512)
    seg = Segmenter(tiny_backbone, "diffseg")(quadrant_image)
    assert seg.labels.shape == (32, 32) and seg.meta["model_size"] == [32, 32]
    assert Segmenter(None, "slic")(quadrant_image).labels.shape == (64, 64)  # image-only: own size
