"""Tiny, seeded diffusion components built from configs (the diffusers way); no network."""

from __future__ import annotations

import json
import os
import string
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

#: Image side for the tiny models: VAE factor 2 x UNet factor 8 = 16 divides it.
TINY_IMAGE_SIZE = 32


def make_tokenizer(directory) -> Any:
    """Offline CLIP tokenizer over single characters: every word splits into several tokens."""
    from transformers import CLIPTokenizer

    vocab = [
        "<|startoftext|>",
        "<|endoftext|>",
        *string.ascii_lowercase,
        *(c + "</w>" for c in string.ascii_lowercase),
        ",",
        ",</w>",
        ".",
        ".</w>",
    ]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    # from_pretrained on the folder works with both transformers 4 (slow) and 5 (tokenizers).
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=16)


def sd1_unet_config() -> dict[str, Any]:
    """An SD-1.x-shaped UNet (3 cross-attention down blocks + plain block, 2 layers each:
    16 self-attention layers, like SD 1.5) at toy width."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 8, 16, 16),
        norm_num_groups=4,
        attention_head_dim=2,
        cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def sdxl_unet_config(width_1: int, width_2: int) -> dict[str, Any]:
    """An SDXL-shaped UNet for text encoders of widths `width_1` and `width_2`: cross-attention
    on their concatenated hidden states, `text_time` conditioning on the second one's pooled
    projection (assumed `width_2` wide) plus 6 time ids."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16, 16),
        norm_num_groups=4,
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + width_2,
        cross_attention_dim=width_1 + width_2,
    )


def tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=2,
        layers_per_block=1,
    )


def tiny_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)


def _mmdit_clip(tokenizer, with_projection: bool) -> Any:
    import transformers

    config = transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), projection_dim=16, max_position_embeddings=16,
    )  # fmt: skip
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return cls(config)


def _mmdit_t5(tokenizer) -> Any:
    import transformers

    config = transformers.T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=len(tokenizer))
    return transformers.T5EncoderModel(config)


def tiny_sd3_pipe(tokenizer, sd35: bool, t5_tokenizer) -> Any:
    """A seeded tiny StableDiffusion3Pipeline for 32 px inputs (VAE factor 2, patch 2: 8x8 tokens);
    `sd35`: dual attention in block 0 and RMS q/k norms, as SD3.5."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=TINY_IMAGE_SIZE // 2, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32,
        out_channels=4, pos_embed_max_size=32, dual_attention_layers=(0,) if sd35 else (),
        qk_norm="rms_norm" if sd35 else None,
    )  # fmt: skip
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(),
        text_encoder=_mmdit_clip(tokenizer, True), tokenizer=tokenizer, text_encoder_2=_mmdit_clip(tokenizer, True),
        tokenizer_2=tokenizer, text_encoder_3=_mmdit_t5(tokenizer), tokenizer_3=t5_tokenizer,
    )  # fmt: skip


def tiny_flux_pipe(tokenizer, t5_tokenizer) -> Any:
    """A seeded tiny FluxPipeline (2 double + 2 single blocks, guidance-distilled like FLUX.1-dev)."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )  # fmt: skip
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(),
        text_encoder=_mmdit_clip(tokenizer, False), tokenizer=tokenizer, text_encoder_2=_mmdit_t5(tokenizer),
        tokenizer_2=t5_tokenizer, transformer=transformer,
    )  # fmt: skip


def tiny_mmdit_pipelines(root) -> dict[str, Any]:
    """family ("sd3", "sd35", "flux") -> a tiny pipeline; the tokenizer files go to ``root / "tok"``."""
    (root / "tok").mkdir()
    tokenizer = make_tokenizer(root / "tok")
    # the T5 role: the same letters, 512 long as real T5 tokenizers (the pipelines' 256 / 512 apply)
    t5 = type(tokenizer).from_pretrained(str(root / "tok"), model_max_length=512)
    return {
        "sd3": tiny_sd3_pipe(tokenizer, False, t5),
        "sd35": tiny_sd3_pipe(tokenizer, True, t5),
        "flux": tiny_flux_pipe(tokenizer, t5),
    }


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models are dominated by thread start-up, so one
    thread is several times faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_components(tiny_tokenizer) -> dict[str, Any]:
    """SD-1.x-shaped components: UNet, VAE (factor 2), CLIP text encoder, tokenizer, DDPM."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd1_unet_config())
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tiny_tokenizer),
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    return dict(
        unet=unet, vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tiny_tokenizer, scheduler=tiny_scheduler()
    )


@pytest.fixture(scope="session")
def tiny_sdxl_components(tiny_tokenizer) -> dict[str, Any]:
    """SDXL-shaped components: two text encoders, `text_time` added conditioning."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = dict(
        vocab_size=len(tiny_tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=8,
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sdxl_unet_config(8, 8))
    torch.manual_seed(0)
    te1 = CLIPTextModel(CLIPTextConfig(**cfg))
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    return dict(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=te1,
        tokenizer=tiny_tokenizer,
        text_encoder_2=te2,
        tokenizer_2=tiny_tokenizer,
        scheduler=tiny_scheduler(),
    )


@pytest.fixture
def tiny_backbone(tiny_components):
    from diffuseg.backbone import DiffusionBackbone

    return DiffusionBackbone(**tiny_components, name="tiny-sd1")


@pytest.fixture
def tiny_sdxl_backbone(tiny_sdxl_components):
    from diffuseg.backbone import DiffusionBackbone

    return DiffusionBackbone(**tiny_sdxl_components, name="tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory):
    """The tiny SD-1.x components saved as a diffusers folder (`save_pretrained`)."""
    from diffusers import StableDiffusionPipeline

    d = tmp_path_factory.mktemp("tiny-model")
    pipe = StableDiffusionPipeline(
        **tiny_components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture
def quadrant_image() -> Image.Image:
    """64x64 RGB image with four flat colour quadrants plus mild seeded noise."""
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.float64)
    img[:32, :32] = (220, 30, 30)
    img[:32, 32:] = (30, 200, 40)
    img[32:, :32] = (30, 40, 210)
    img[32:, 32:] = (230, 220, 40)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture
def photo(tmp_path, quadrant_image) -> str:
    """A 48x32 (W x H) PNG of the quadrant image: a non-square photo for CLI tests."""
    path = tmp_path / "photo.png"
    quadrant_image.resize((48, 32)).save(path)
    return str(path)
