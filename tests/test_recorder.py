"""The recorder is inert, complete, normalised, and always restores the UNet."""

from __future__ import annotations

import pytest
import torch

from diffuseg.backbone import FeatureRequest, record
from diffuseg.backbone.recorder import EarlyExit, attention_layers


def _inputs(unet, batch=2, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    latents = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g)
    return latents, text


def _expected_layers(unet_config, kind: str) -> int:
    """Self/cross-attention layer count derived from the config: each cross-attention down block
    has layers_per_block transformer blocks, each up block one more, plus the mid block."""
    per = unet_config.layers_per_block
    downs = sum(t.startswith("CrossAttn") for t in unet_config.down_block_types)
    ups = sum(t.startswith("CrossAttn") for t in unet_config.up_block_types)
    return downs * per + ups * (per + 1) + 1


def test_layer_count_matches_config_sd1_shape(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet)
    request = FeatureRequest(self_attention=True, cross_attention=True, per_layer=True)
    with record(unet, request, latent_size=tuple(latents.shape[-2:])) as store, torch.no_grad():
        unet(latents, 10, encoder_hidden_states=text)
    n_self = _expected_layers(unet.config, "self")
    assert n_self == 16  # SD-1.x shape: 5 @ 64, 5 @ 32, 5 @ 16, 1 @ 8 (here 16/8/4/2)
    assert len(store.maps["self"]) == n_self
    assert len(store.maps["cross"]) == n_self
    assert sorted({store.sizes[k] for k in store.maps["self"]}) == [(2, 2), (4, 4), (8, 8), (16, 16)]


def test_recording_is_inert_and_rows_sum_to_one(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet)
    with torch.no_grad():
        plain = unet(latents, 10, encoder_hidden_states=text).sample
        with record(unet, FeatureRequest(self_attention=True, cross_attention=True), (16, 16)) as store:
            recorded = unet(latents, 10, encoder_hidden_states=text).sample
    assert torch.equal(recorded, plain)  # the layers' own processors compute the outputs
    for kind in ("self", "cross"):
        for _key, value in store.maps[kind].items():
            assert value.dtype == torch.float32
            torch.testing.assert_close(value.sum(-1), torch.ones_like(value.sum(-1)), atol=1e-5, rtol=0)
    counts = store.counts["self"]
    assert counts == {"attn1@16x16": 5, "attn1@8x8": 5, "attn1@4x4": 5, "attn1@2x2": 1}


def test_recording_attention_leaves_hidden_states_bit_identical(tiny_components):
    """What one request records does not depend on what else a shared pass records."""
    unet = tiny_components["unet"]
    latents, text = _inputs(unet)
    path = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    alone = FeatureRequest(hidden_states=(path,))
    shared = alone | FeatureRequest(self_attention=True, cross_attention=True, normalization="log")
    with torch.no_grad():
        with record(unet, alone, (16, 16)) as a:
            unet(latents, 10, encoder_hidden_states=text)
        with record(unet, shared, (16, 16)) as b:
            unet(latents, 10, encoder_hidden_states=text)
    assert torch.equal(a.hidden[path], b.hidden[path])


def test_per_resolution_means_equal_per_layer_average(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet, batch=1)
    with torch.no_grad():
        with record(unet, FeatureRequest(self_attention=True, per_layer=True), (16, 16)) as per_layer:
            unet(latents, 10, encoder_hidden_states=text)
        with record(unet, FeatureRequest(self_attention=True), (16, 16)) as per_res:
            unet(latents, 10, encoder_hidden_states=text)
    layers = [v for k, v in per_layer.maps["self"].items() if per_layer.sizes[k] == (8, 8)]
    torch.testing.assert_close(per_res.maps["self"]["attn1@8x8"], torch.stack(layers).mean(0), atol=1e-6, rtol=1e-5)


def test_only_requested_layers_get_recording_processors(tiny_components):
    unet = tiny_components["unet"]
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    request = FeatureRequest(self_attention=("up_blocks.3.*",))
    with record(unet, request, (16, 16)):
        inside = unet.attn_processors
        recording = [k for k, v in inside.items() if type(v).__name__ == "RecordingAttnProcessor"]
    assert recording and all(k.startswith("up_blocks.3.") and ".attn1." in k for k in recording)
    assert len(recording) == 3
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_processors_and_hooks_restored_after_exception(tiny_components):
    unet = tiny_components["unet"]
    before = dict(unet.attn_processors)
    module = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    hooks_before = len(module._forward_hooks)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    request = FeatureRequest(self_attention=True, hidden_states=(path,))
    with pytest.raises(RuntimeError, match="boom"):
        with record(unet, request, (16, 16)):
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert len(module._forward_hooks) == hooks_before
    with record(unet, request, (16, 16)):  # and it can be used again
        pass


def test_nested_recording_is_refused(tiny_components):
    unet = tiny_components["unet"]
    with record(unet, FeatureRequest(self_attention=True), (16, 16)):
        with pytest.raises(RuntimeError, match="already being recorded"):
            with record(unet, FeatureRequest(self_attention=True), (16, 16)):
                pass


def test_hidden_states_and_early_exit_skip_up_blocks(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet, batch=1)
    path = "down_blocks.-2.attentions.-1.transformer_blocks.-1.attn1"  # negative indices resolve
    calls = []
    handle = unet.up_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with record(unet, FeatureRequest(hidden_states=(path,), early_exit=True), (16, 16)) as store, torch.no_grad():
            with pytest.raises(EarlyExit):
                unet(latents, 10, encoder_hidden_states=text)
    finally:
        handle.remove()
    assert calls == []
    assert store.hidden[path].shape == (1, 4 * 4, unet.config.block_out_channels[2])


def test_unnormalised_attention_is_exp_scores(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet, batch=1)
    with torch.no_grad():
        with record(unet, FeatureRequest(cross_attention=True, per_layer=True), (16, 16)) as soft:
            unet(latents, 10, encoder_hidden_states=text)
        with record(
            unet,
            FeatureRequest(cross_attention=True, per_layer=True, normalization="none", average_heads=False),
            (16, 16),
        ) as raw:
            unet(latents, 10, encoder_hidden_states=text)
    key = next(iter(raw.maps["cross"]))
    r = raw.maps["cross"][key]  # (B, heads, N, T) of exp(scores)
    assert r.ndim == 4 and (r > 0).all()
    probs = (r / r.sum(-1, keepdim=True)).mean(1)
    torch.testing.assert_close(probs, soft.maps["cross"][key], atol=1e-5, rtol=1e-4)


def test_unet_without_attention_is_rejected():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        cross_attention_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
    )
    assert attention_layers(unet) == []
    with pytest.raises(ValueError, match="no self-attention layers"):
        with record(unet, FeatureRequest(self_attention=True), (8, 8)):
            pass


def test_bad_hidden_state_path(tiny_components):
    with pytest.raises(ValueError, match="does not exist"):
        with record(tiny_components["unet"], FeatureRequest(hidden_states=("down_blocks.9.attn1",)), (16, 16)):
            pass


def test_request_union():
    a = FeatureRequest(self_attention=True)
    b = FeatureRequest(cross_attention=("mid_block*",), hidden_states=("x",), early_exit=True)
    c = a | b
    assert c.self_attention is True and c.cross_attention == ("mid_block*",) and c.hidden_states == ("x",)
    assert c.early_exit is False
    with pytest.raises(ValueError, match="normalization"):
        FeatureRequest(self_attention=True) | FeatureRequest(cross_attention=True, normalization="none")
    with pytest.raises(ValueError, match="normalization"):
        FeatureRequest(normalization="sigmoid")


def test_cfg_batch_keeps_only_the_conditional_half(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _inputs(unet, batch=1)
    uncond = torch.zeros_like(text)
    req = FeatureRequest(self_attention=True, cross_attention=True)
    with torch.no_grad():
        with record(unet, req, (16, 16), batch_slice=slice(1, 2)) as cfg:
            unet(torch.cat([latents, latents]), 10, encoder_hidden_states=torch.cat([uncond, text]))
        with record(unet, req, (16, 16)) as cond:
            unet(latents, 10, encoder_hidden_states=text)
    for kind in ("self", "cross"):
        for key, value in cond.maps[kind].items():
            assert cfg.maps[kind][key].shape[0] == 1
            torch.testing.assert_close(cfg.maps[kind][key], value, atol=1e-5, rtol=1e-4)
