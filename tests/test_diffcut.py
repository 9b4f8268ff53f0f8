"""DiffCut on tiny SD-1.x- and SDXL-shaped backbones: module lookup, early exit, segment()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffuseg.backbone import FeatureRequest
from diffuseg.backbone.layers import deepest_encoder_self_attention as feature_module_path
from diffuseg.backbone.layers import unet_layer_map
from diffuseg.backbone.protocol import LayerMap
from diffuseg.methods import diffcut, get_method
from diffuseg.methods.diffcut import DiffCutConfig
from diffuseg.plan import Query

SIZE = 32  # tiny models: VAE factor 2 x UNet factor <= 8


def _extract(backbone, image, config=None, seed=0, request=None):
    config = config or DiffCutConfig()
    return backbone.extract(
        image,
        request or diffcut.requires(backbone.layer_map),
        prompts=config.prompt,
        timestep=config.timestep,
        image_size=SIZE,
        resize_mode="crop",
        add_noise=config.add_noise,
        shared_noise=config.shared_noise,
        generator=torch.Generator().manual_seed(seed),
    )


def test_feature_module_found_by_structure(tiny_components, tiny_sdxl_components):
    # SD-1.x: the last down block has no attention -> down_blocks[-2].
    sd1 = tiny_components["unet"]
    assert not hasattr(sd1.down_blocks[-1], "attentions")
    assert feature_module_path(sd1) == "down_blocks.2.attentions.1.transformer_blocks.0.attn1"
    # SDXL-shaped: down_blocks[-1], 2 transformer layers in that block -> the last one.
    xl = tiny_sdxl_components["unet"]
    assert feature_module_path(xl) == "down_blocks.2.attentions.1.transformer_blocks.1.attn1"
    request = diffcut.requires(unet_layer_map(xl))
    assert request.early_exit and request.hidden_states == (feature_module_path(xl),)
    assert "feature_module_path" not in diffcut.__all__


def test_no_attention_unet_raises():
    class Block(torch.nn.Module):
        pass

    unet = torch.nn.Module()
    unet.down_blocks = torch.nn.ModuleList([Block(), Block()])
    with pytest.raises(ValueError, match="attention"):
        feature_module_path(unet)
    # a layer map without a feature layer: the same message from the method's request
    with pytest.raises(ValueError, match="^no down block of this UNet has attention layers; DiffCut needs one.$"):
        diffcut.requires(LayerMap())


def test_early_exit_records_the_same_feature_and_skips_up_blocks(tiny_sdxl_backbone, quadrant_image):
    unet = tiny_sdxl_backbone.unet
    path = feature_module_path(unet)
    calls = []
    handle = unet.up_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        early = _extract(tiny_sdxl_backbone, quadrant_image)
        assert calls == []  # no up block ran
        full = _extract(
            tiny_sdxl_backbone, quadrant_image, request=FeatureRequest(hidden_states=(path,), early_exit=False)
        )
        assert calls == [1]
    finally:
        handle.remove()
    a, b = early.hidden_states[path], full.hidden_states[path]
    assert a.dtype == torch.float32 and a.shape == (1, (SIZE // 2 // 4) ** 2, 16)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_sdxl_backbone", "tiny_backbone"])
def test_segment_invariants_and_determinism(fixture, request, quadrant_image):
    backbone = request.getfixturevalue(fixture)
    config = DiffCutConfig(tau=0.9, alpha=2.0)
    seg = get_method("diffcut").run(_extract(backbone, quadrant_image, config), config, Query(), {})
    assert seg.method == "diffcut" and seg.config is config
    assert seg.labels.shape == (SIZE, SIZE) and seg.labels.dtype == torch.int64
    k = seg.num_segments
    assert seg.labels.min() == 0 and set(seg.label_ids()) == set(range(k))
    tokens = seg.extras["token_labels"]
    assert tokens.shape == (SIZE // 2 // 4,) * 2  # both UNets: 2 downsamplers before the block
    again = get_method("diffcut").run(_extract(backbone, quadrant_image, config), config, Query(), {})
    assert torch.equal(seg.labels, again.labels)


def test_resegmenting_with_another_tau_reuses_the_cuts_and_the_image_affinity(tiny_sdxl_backbone, quadrant_image):
    """The cuts and PAMR's image affinity are kept with the features (`Features.derive`): a
    re-segmentation with another tau or PAMR setting gives a fresh run's labels."""
    feats = _extract(tiny_sdxl_backbone, quadrant_image)
    for config in (DiffCutConfig(tau=0.9, alpha=2.0), DiffCutConfig(tau=0.3, alpha=2.0, pamr_iterations=3)):
        cached = diffcut.segment(feats, config)
        fresh = diffcut.segment(_extract(tiny_sdxl_backbone, quadrant_image), config)
        assert torch.equal(cached.labels, fresh.labels)
    keys = {k[:2] for k in feats.derived}
    assert keys == {("diffcut", "cuts"), ("diffcut", "pamr")}


def test_assignment_size_and_no_refine(tiny_sdxl_backbone, quadrant_image):
    feats = _extract(tiny_sdxl_backbone, quadrant_image)
    seg = diffcut.segment(feats, DiffCutConfig(assignment_size=8, refine=False, tau=0.9, alpha=2.0))
    assert seg.labels.shape == (8, 8)
    refined = diffcut.segment(feats, DiffCutConfig(assignment_size=8, tau=0.9, alpha=2.0))
    assert refined.labels.shape == (8, 8)


def test_shared_noise_gives_identical_features_for_identical_images(tiny_sdxl_backbone, quadrant_image):
    shared = DiffCutConfig(shared_noise=True)
    per_image = DiffCutConfig(shared_noise=False)
    path = feature_module_path(tiny_sdxl_backbone.unet)
    a = _extract(tiny_sdxl_backbone, [quadrant_image, quadrant_image], shared).hidden_states[path]
    b = _extract(tiny_sdxl_backbone, [quadrant_image, quadrant_image], per_image).hidden_states[path]
    assert torch.allclose(a[0], a[1], atol=1e-6)
    assert not torch.allclose(b[0], b[1], atol=1e-6)


def test_missing_feature_raises(tiny_sdxl_backbone, quadrant_image):
    feats = _extract(tiny_sdxl_backbone, quadrant_image)
    feats.hidden_states = {}
    with pytest.raises(ValueError, match="attn1"):
        diffcut.segment(feats)


def test_config_defaults_follow_reference_and_validate():
    cfg = DiffCutConfig()
    assert (cfg.tau, cfg.alpha, cfg.timestep, cfg.image_size, cfg.prompt) == (0.5, 10.0, 50, 1024, "")
    assert cfg.add_noise and cfg.refine and cfg.pamr_iterations == 10
    assert cfg.pamr_dilations == (1, 2, 4, 8) and cfg.median_size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau = 1.0  # type: ignore[misc]
    for bad in (
        {"tau": 0},
        {"alpha": -1},
        {"tau": float("inf")},
        {"timestep": -1},
        {"pamr_dilations": ()},
        {"median_size": 2},
        {"assignment_size": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiffCutConfig(**bad)
    fields = {f.name for f in dataclasses.fields(DiffCutConfig)}
    assert {"tau", "alpha", "refine"} <= fields and "resize_mode" not in fields  # framing is the caller's


def test_plan_and_presets(tiny_sdxl_backbone):
    spec = get_method("diffcut")
    pass_ = spec.plan(DiffCutConfig(), Query(), tiny_sdxl_backbone)
    assert pass_.size == 1024 and pass_.timestep == 50 and pass_.add_noise and pass_.request.early_exit
    assert pass_.request.hidden_states == (feature_module_path(tiny_sdxl_backbone.unet),)
    assert spec.plan(DiffCutConfig(), Query(size=64, resize_mode="crop"), tiny_sdxl_backbone).size == 64
    assert spec.make_config("sd1").tau == 0.2 and spec.make_config("sd1", tau=0.4).tau == 0.4  # flags win
    assert spec.make_config("toy").image_size == 128 and spec.make_config(None) == DiffCutConfig()


def test_query_label_size_sets_the_assignment_size(tiny_sdxl_backbone, quadrant_image):
    feats = _extract(tiny_sdxl_backbone, quadrant_image)
    config = DiffCutConfig(refine=False, tau=0.9, alpha=2.0)
    assert diffcut.segment(feats, config, Query(label_size=8)).labels.shape == (8, 8)
    assert diffcut.segment(feats, config, Query()).labels.shape == (SIZE, SIZE)


def test_image_smaller_than_feature_grid_raises(tiny_sdxl_backbone, quadrant_image):
    from PIL import Image

    with pytest.raises(ValueError, match="smaller"):
        _extract(tiny_sdxl_backbone, Image.new("RGB", (3, 3)))
    feats = _extract(tiny_sdxl_backbone, quadrant_image)
    feats.images = torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="smaller than the feature grid"):
        diffcut.segment(feats)


def test_constant_image_gives_one_segment_without_nan(tiny_sdxl_backbone):
    from PIL import Image

    feats = _extract(tiny_sdxl_backbone, Image.new("RGB", (SIZE, SIZE), (90, 90, 90)), DiffCutConfig(add_noise=False))
    path = feature_module_path(tiny_sdxl_backbone.unet)
    assert torch.isfinite(feats.hidden_states[path]).all()
    seg = diffcut.segment(feats, DiffCutConfig(add_noise=False))
    assert seg.labels.shape == (SIZE, SIZE) and seg.num_segments >= 1
