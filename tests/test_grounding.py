"""TokenCompose's token grounding loss and the processor that feeds it (proving-ground training)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffuseg.synthetic.grounding import (  # noqa: E402
    grounding_attention,
    token_classes,
    token_grounding_loss,
)


def _maps_on(mask: torch.Tensor, token: int, num_tokens: int) -> torch.Tensor:
    """(1, N, T) probabilities: `token` takes all attention inside `mask` (r, r), token 0 elsewhere."""
    flat = mask.flatten().float()
    probs = torch.zeros(1, flat.numel(), num_tokens)
    probs[0, :, token] = flat
    probs[0, :, 0] = 1 - flat
    return probs


def test_loss_is_zero_when_attention_sits_in_the_mask_and_one_when_outside():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 3  # class 3: a 4x4 square
    classes = torch.tensor([[-1, 3, -1]])  # token 1 names class 3
    inside = labels[0] == 3
    assert token_grounding_loss([_maps_on(inside, 1, 3)], labels, classes, 4).item() == pytest.approx(0.0)
    assert token_grounding_loss([_maps_on(~inside, 1, 3)], labels, classes, 4).item() == pytest.approx(1.0)
    # Half of the token's mass inside (8 of its 16 pixels): (1 - 1/2)^2.
    half = torch.zeros(8, 8, dtype=torch.bool)
    half[2:6, 2:4] = True
    half[0, 0:8] = True
    assert token_grounding_loss([_maps_on(half, 1, 3)], labels, classes, 4).item() == pytest.approx((1 - 8 / 16) ** 2)


def test_loss_pools_masks_to_each_layer_grid_and_ignores_absent_classes():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 1  # top-left quadrant
    coarse = torch.zeros(2, 2, dtype=torch.bool)
    coarse[0, 0] = True  # the quadrant on a 2x2 grid
    classes = torch.tensor([[-1, 1, 2]])  # class 2 is not in the scene: token 2 does not count
    loss = token_grounding_loss([_maps_on(coarse, 1, 3)], labels, classes, 3)
    assert loss.item() == pytest.approx(0.0)
    no_class = torch.full((1, 3), -1)
    assert token_grounding_loss([_maps_on(coarse, 1, 3)], labels, no_class, 3).item() == 0.0
    weight0 = token_grounding_loss([_maps_on(~coarse, 1, 3)], labels, classes, 3, sample_weight=torch.zeros(1))
    assert weight0.item() == 0.0


def test_token_classes_maps_ids_to_class_indices():
    ids = torch.tensor([[49406, 736, 2075, 49407], [49406, 3546, 49407, 49407]])
    out = token_classes(ids, [2075, 3546])
    assert out.tolist() == [[-1, -1, 0, -1], [-1, 1, -1, -1]]


def test_processor_matches_the_default_output_records_every_cross_layer_and_restores(tiny_components):
    unet = tiny_components["unet"].eval()
    gen = torch.Generator().manual_seed(0)
    dim = unet.config.cross_attention_dim
    x = torch.randn(2, unet.config.in_channels, 16, 16, generator=gen)
    cond = torch.randn(2, 5, dim, generator=gen)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with torch.no_grad():
        ref = unet(x, 10, cond).sample
        with grounding_attention(unet) as maps:
            out = unet(x, 10, cond).sample
    assert torch.allclose(out, ref, atol=1e-5)
    n_cross = sum(k.endswith("attn2.processor") for k in before)
    assert len(maps) == n_cross > 0
    for m in maps:
        assert m.shape[0] == 2 and m.shape[-1] == 5
        assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    with pytest.raises(RuntimeError, match="boom"), grounding_attention(unet):
        raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_gradient_reaches_the_cross_attention_projections():
    from conftest import sd1_unet_config
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd1_unet_config())  # own copy: the shared one may be frozen
    dim = unet.config.cross_attention_dim
    x = torch.randn(1, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(1, 4, dim, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :, 8:] = 1
    unet.zero_grad()
    with grounding_attention(unet) as maps:
        unet(x, 10, cond)
    token_grounding_loss(maps, labels, torch.tensor([[-1, 0, 1, -1]]), 2).backward()
    grads = [p.grad for n, p in unet.named_parameters() if "attn2.to_k" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
