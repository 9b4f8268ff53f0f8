"""Recording joint attention from tiny SD3, SD3.5 and FLUX transformers built from configs (the
diffusers tests' configs): the model's output is unchanged, the recomputed attention times V is
the layer's own output, rows are distributions, FLUX single-stream blocks get the text length,
SD3.5's ``attn2`` is image→image only, and memory stays at the requested blocks."""

from __future__ import annotations

import pytest
import torch

from diffuseg.backbone.joint_attention import (
    JointRequest,
    joint_layers,
    joint_probabilities,
    record_joint,
    recording_bytes,
)

diffusers = pytest.importorskip("diffusers")
FluxAttnProcessor = pytest.importorskip("diffusers.models.transformers.transformer_flux").FluxAttnProcessor

GRID = 8  # image tokens per side (patch size 1 on an 8x8 latent)
TEXT = 12  # text tokens


def _sd3(dual: tuple[int, ...] = (), qk_norm: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=GRID, patch_size=1, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=32, dual_attention_layers=dual, qk_norm=qk_norm,
    ).eval()  # fmt: skip


def _sd3_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, 4, GRID, GRID, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT, 32, generator=g),
        "pooled_projections": torch.randn(batch, 16, generator=g),
        "timestep": torch.tensor([500] * batch),
    }


def _flux() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()  # fmt: skip


def _flux_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.stack(torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij"), -1).reshape(-1, 2)
    return {
        "hidden_states": torch.randn(batch, GRID * GRID, 4, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT, 32, generator=g),
        "pooled_projections": torch.randn(batch, 32, generator=g),
        "timestep": torch.tensor([0.5] * batch),
        "img_ids": torch.cat([torch.zeros(GRID * GRID, 1), ids.float()], 1),
        "txt_ids": torch.zeros(TEXT, 3),
    }


CASES = {
    "sd3": (_sd3, _sd3_inputs),
    "sd35": (lambda: _sd3(dual=(0, 1), qk_norm="rms_norm"), _sd3_inputs),
    "flux": (_flux, _flux_inputs),
}


@pytest.mark.parametrize("family", list(CASES))
def test_recording_every_layer_leaves_the_output_unchanged_and_restores_the_processors(family):
    make, inputs = CASES[family]
    model, x = make(), inputs()
    with torch.no_grad():
        plain = model(**x).sample
    before = {k: type(v) for k, v in model.attn_processors.items()}
    layers = joint_layers(model)
    with torch.no_grad(), record_joint(model, JointRequest(tuple(layers), tuple(layers))) as store:
        recorded = model(**x).sample
    assert torch.equal(recorded, plain)  # the parent processor computes the output
    assert {k: type(v) for k, v in model.attn_processors.items()} == before
    assert set(store.image_to_image) == set(layers)
    n = GRID * GRID
    for layer in layers:
        i2i = store.image_to_image[layer]
        assert i2i.shape == (2, n, n) and i2i.dtype == torch.float32
        assert torch.allclose(i2i.sum(-1), torch.ones(2, n), atol=1e-5)  # re-normalised over image keys
        if layer in store.image_to_text:
            i2t = store.image_to_text[layer]
            assert i2t.shape == (2, n, TEXT) and torch.all(i2t > 0) and torch.all(i2t.sum(-1) < 1)


def test_sd35_attn2_is_recorded_as_image_to_image_only():
    model = CASES["sd35"][0]()
    layers = joint_layers(model)
    assert "transformer_blocks.0.attn2" in layers
    with torch.no_grad(), record_joint(model, JointRequest(tuple(layers), tuple(layers))) as store:
        model(**_sd3_inputs())
    assert "transformer_blocks.0.attn2" in store.image_to_image
    assert "transformer_blocks.0.attn2" not in store.image_to_text
    assert "transformer_blocks.0.attn" in store.image_to_text


def _capture_inputs(model: torch.nn.Module, layer: str, x: dict) -> dict:
    """The arguments `layer`'s attention module is called with in one forward pass."""
    seen = {}
    module = model.get_submodule(layer)
    hook = module.register_forward_pre_hook(lambda m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**x)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize(
    ("family", "layer"),
    [
        ("sd3", "transformer_blocks.1.attn"),
        ("sd35", "transformer_blocks.0.attn2"),
        ("flux", "transformer_blocks.1.attn"),
        ("flux", "single_transformer_blocks.1.attn"),
    ],
)
def test_recomputed_attention_times_v_is_the_layers_own_output(family, layer):
    make, inputs = CASES[family]
    model, x = make(), inputs()
    seen = _capture_inputs(model, layer, x)
    attn = model.get_submodule(layer)
    kwargs = dict(seen["kwargs"])
    hidden = kwargs.pop("hidden_states", seen["args"][0] if seen["args"] else None)
    ehs = kwargs.get("encoder_hidden_states")
    image_first = family != "flux"
    single = layer.startswith("single")
    with torch.no_grad():
        q, k, v, text = joint_probabilities(
            attn, hidden, ehs, image_first=image_first, text_length=TEXT if single else 0,
            image_rotary_emb=kwargs.get("image_rotary_emb"),
        )  # fmt: skip
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        mixed = (probs @ v).transpose(1, 2).flatten(2)  # (B, L, H*D): the attention output before to_out
        out = attn(hidden_states=hidden, **kwargs)
    n = GRID * GRID
    assert text == (0 if layer.endswith("attn2") else TEXT)
    assert q.shape[2] == n + text
    image = mixed[:, :n] if image_first else mixed[:, text:]
    if single:  # the single-stream block returns the mixed joint sequence itself
        assert torch.allclose(out, mixed, atol=1e-5)
        return
    image_out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(image_out, attn.to_out[1](attn.to_out[0](image)), atol=1e-5)


def test_flux_single_stream_blocks_get_the_text_length_of_the_call():
    model = _flux()
    layer = "single_transformer_blocks.0.attn"
    for text in (TEXT, 5):
        x = _flux_inputs()
        x["encoder_hidden_states"] = x["encoder_hidden_states"][:, :text]
        x["txt_ids"] = x["txt_ids"][:text]
        with torch.no_grad(), record_joint(model, JointRequest((layer,), (layer,))) as store:
            model(**x)
        assert store.text_length == text
        assert store.image_to_text[layer].shape == (2, GRID * GRID, text)


def test_image_to_text_columns_follow_the_text_tokens():
    """A text token whose key equals many image keys draws the image rows' mass (SD3: image first)."""
    model = _sd3()
    layer = "transformer_blocks.1.attn"
    with torch.no_grad(), record_joint(model, JointRequest(image_to_text=(layer,))) as store:
        model(**_sd3_inputs())
    assert layer not in store.image_to_image
    seen = _capture_inputs(model, layer, _sd3_inputs())
    attn = model.get_submodule(layer)
    kwargs = dict(seen["kwargs"])
    hidden = kwargs.pop("hidden_states", seen["args"][0] if seen["args"] else None)
    with torch.no_grad():
        q, k, _, _ = joint_probabilities(attn, hidden, kwargs["encoder_hidden_states"], image_first=True)
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1).mean(1)
    n = GRID * GRID
    assert torch.allclose(store.image_to_text[layer], probs[:, :n, n:], atol=1e-6)


def test_log_text_maps_are_the_log_of_the_head_mean_of_exp_scores():
    """MaskDiffusion's unnormalised attention: log mean_h exp(q.k/sqrt d), never overflowing."""
    model = _flux()
    layer = "transformer_blocks.1.attn"
    request = JointRequest(image_to_text=(layer,), text_normalization="log")
    with torch.no_grad(), record_joint(model, request) as store:
        model(**_flux_inputs())
    seen = _capture_inputs(model, layer, _flux_inputs())
    kwargs = dict(seen["kwargs"])
    hidden = kwargs.pop("hidden_states", seen["args"][0] if seen["args"] else None)
    with torch.no_grad():
        q, k, _, text = joint_probabilities(
            model.get_submodule(layer), hidden, kwargs["encoder_hidden_states"], image_first=False,
            image_rotary_emb=kwargs.get("image_rotary_emb"),
        )  # fmt: skip
        scores = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).double()
    expected = scores.exp().mean(1)[:, text:, :text].log()
    assert torch.allclose(store.image_to_text[layer].double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="`text_normalization`"):
        JointRequest(image_to_text=(layer,), text_normalization="none")


def test_an_unknown_layer_names_the_models_layers():
    model = _sd3()
    with pytest.raises(ValueError, match=r"`layers` has 'transformer_blocks.7.attn'.*3 layers are"):
        with record_joint(model, JointRequest(("transformer_blocks.7.attn",))):
            pass
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in model.attn_processors.values())


def test_processors_are_restored_when_the_pass_raises():
    model = _sd3()
    before = dict(model.attn_processors)
    with pytest.raises(RuntimeError), record_joint(model, JointRequest(tuple(joint_layers(model)))):
        model(**{**_sd3_inputs(), "hidden_states": torch.randn(2, 3, GRID, GRID)})  # wrong channels
    assert {k: type(v) for k, v in model.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_recording_memory_is_the_requested_blocks():
    request = JointRequest(("a", "b"), ("a", "b"))
    n, t = 4096, 333  # SD3 at 1024 px
    kept = 4 * n * (n + t) * 2
    assert recording_bytes(n, t, request, heads=24) - kept <= 4 * (1 << 22)  # plus one score tile
    assert kept < 160e6  # two layers' blocks; the full 24-head joint map of one layer is ~1.9 GB
    with pytest.raises(ValueError, match="must name layers"):
        JointRequest(())
    with pytest.raises(ValueError, match="`image_to_text` must be a sequence"):
        JointRequest(image_to_text="transformer_blocks.0.attn")
