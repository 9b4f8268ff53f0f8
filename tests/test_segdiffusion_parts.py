"""Seg-diffusion building blocks: the widened conv_in, the mask encoding, pyramid noise."""

from __future__ import annotations

import pytest
import torch

from diffuseg.segdiffusion import decode_masks, encode_masks, labels_from_probabilities, pyramid_noise, widen_conv_in


def _fresh_unet(config_fn):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**config_fn()).eval()


@pytest.mark.parametrize("shape", ["sd1", "sd2"])
def test_widened_conv_in_keeps_the_base_function(shape):
    """Marigold's initialisation: with the image latent in both halves the widened UNet computes
    exactly what the base UNet computes on that latent (weights duplicated and halved, never
    re-initialised); the config records 8 input channels."""
    from conftest import sd1_unet_config

    def config():
        c = sd1_unet_config()
        if shape == "sd2":  # SD 2-shaped: linear projections, head dims per level
            c.update(use_linear_projection=True, attention_head_dim=(2, 2, 4, 4))
        return c

    base = _fresh_unet(config)
    wide = widen_conv_in(_fresh_unet(config))
    assert wide.conv_in.in_channels == 8 and wide.config.in_channels == 8
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 5, base.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = base(z, 10, encoder_hidden_states=text).sample
        got = wide(torch.cat([z, z], 1), 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wide.conv_in.weight[:, :4] * 2, base.conv_in.weight)
    with pytest.raises(ValueError, match="cannot be widened"):
        widen_conv_in(wide)  # already reads 8 channels for 4 predicted


def test_widened_unet_round_trips_through_save_pretrained(tmp_path):
    from conftest import sd1_unet_config
    from diffusers import UNet2DConditionModel

    wide = widen_conv_in(_fresh_unet(sd1_unet_config))
    wide.save_pretrained(tmp_path)
    again = UNet2DConditionModel.from_pretrained(tmp_path)
    assert again.config.in_channels == 8
    torch.testing.assert_close(again.conv_in.weight, wide.conv_in.weight, rtol=0, atol=0)


def test_toy_vae_mask_encoding_is_invertible():
    """Binary masks survive encode -> decode with the shipped toy model's VAE."""
    from diffuseg.backbone import DiffusionBackbone

    backbone = DiffusionBackbone.from_pretrained("toy")
    masks = torch.zeros(3, 64, 64)
    masks[0, 8:40, 8:40] = 1  # a square
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    masks[1] = (((yy - 40) ** 2 + (xx - 36) ** 2) < 18**2).float()  # a disc
    masks[2] = 1 - masks[0]
    latents = encode_masks(backbone, masks)
    assert latents.shape == (3, 4, 16, 16)
    probs = decode_masks(backbone, latents)
    assert probs.shape == (3, 64, 64) and probs.min() >= 0 and probs.max() <= 1
    decoded = probs > 0.5
    for m, d in zip(masks.bool(), decoded, strict=True):
        iou = (m & d).sum() / (m | d).sum()
        assert iou > 0.9


def test_labels_from_probabilities():
    p = torch.tensor([[[0.9, 0.2], [0.3, 0.1]], [[0.1, 0.8], [0.2, 0.2]]])
    assert labels_from_probabilities(p).tolist() == [[0, 1], [0, 1]]
    p3 = torch.cat([torch.zeros(1, 2, 2), p])  # class 0 = background
    assert labels_from_probabilities(p3, background=0, threshold=0.5).tolist() == [[1, 2], [0, 0]]
    with pytest.raises(ValueError, match="together"):
        labels_from_probabilities(p, threshold=0.5)


def test_pyramid_noise_is_seeded_unit_variance_and_low_frequency_rich():
    shape = (2, 4, 32, 32)
    a = pyramid_noise(shape, torch.Generator().manual_seed(0))
    b = pyramid_noise(shape, torch.Generator().manual_seed(0))
    assert a.shape == shape and torch.equal(a, b)
    torch.testing.assert_close(a.flatten(1).std(1), torch.ones(2))
    plain = pyramid_noise(shape, torch.Generator().manual_seed(0), levels=0)
    # coarse levels add low-frequency energy: 4x4 block means vary more than white noise's
    pooled = torch.nn.functional.avg_pool2d(a, 4).var()
    assert pooled > 1.3 * torch.nn.functional.avg_pool2d(plain, 4).var()  # white noise: 1/16 +- 6%
    with pytest.raises(ValueError, match="discount"):
        pyramid_noise(shape, discount=1.0)


def _tiny_training_setup():
    from conftest import sd1_unet_config
    from diffusers import DDIMScheduler

    unet = widen_conv_in(_fresh_unet(sd1_unet_config)).train()
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 4, 16, 16, generator=g)
    masks = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    return unet, scheduler, image, masks, text


def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch():
    from diffuseg.segdiffusion.objective import denoising_loss

    unet, scheduler, image, masks, text = _tiny_training_setup()

    def loss():  # the same t and noise every time: the loss of this fixed batch
        return denoising_loss(unet, scheduler, image, masks, text, torch.Generator().manual_seed(0))

    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    with torch.no_grad():
        before = loss().item()
    for _ in range(25):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.6 * before


def test_prediction_target_follows_the_scheduler():
    from diffusers import DDIMScheduler

    from diffuseg.segdiffusion.objective import prediction_target

    z, n, t = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([10])
    eps = DDIMScheduler(prediction_type="epsilon")
    assert torch.equal(prediction_target(eps, z, n, t), n)
    v = DDIMScheduler(prediction_type="v_prediction")
    torch.testing.assert_close(prediction_target(v, z, n, t), v.get_velocity(z, n, t))
    with pytest.raises(ValueError, match="sample"):
        prediction_target(DDIMScheduler(prediction_type="sample"), z, n, t)


def test_checkpoint_round_trips_bit_exactly_and_rejects_bad_folders(tmp_path):
    import json

    from diffuseg.segdiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    unet, *_ = _tiny_training_setup()
    save_checkpoint(tmp_path / "ck", unet, {"base_model": "tiny", "step": 7, "template": "a photo of a {class}"})
    again, record = load_checkpoint(tmp_path / "ck")
    assert record["step"] == 7 and record["base_model"] == "tiny"
    for (name, a), (_, b) in zip(unet.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="segdiffusion.json not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "ck" / "segdiffusion.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "segdiffusion.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="format 1"):
        load_checkpoint(tmp_path / "ck")
    plain = _fresh_unet(__import__("conftest").sd1_unet_config)  # not widened: reads 4 channels
    save_checkpoint(tmp_path / "plain", plain, {"step": 0})
    with pytest.raises(CheckpointError, match="reads 4 channels"):
        load_checkpoint(tmp_path / "plain")
    (tmp_path / "plain" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load the mask UNet"):
        load_checkpoint(tmp_path / "plain")
