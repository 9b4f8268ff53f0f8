"""Architecture of the proving-ground ("toy") text-to-image latent diffusion model.

Stable Diffusion 1.x in miniature, built from the ordinary diffusers / transformers classes so
that the shipped folder loads through the normal backbone code:

* `AutoencoderKL` with three encoder blocks: 64x64x3 images -> 16x16x4 latents (factor 4).
* `UNet2DConditionModel` with self- and cross-attention at three resolutions (16, 8, 4) plus
  the mid block, like SD's 64/32/16(/8) pyramid scaled down.
* `CLIPTextModel` with the real CLIP vocabulary (49,408 ids), a 32-wide hidden state and no
  transformer layers (see `ToyModelConfig.text_layers`); only a few dozen words ever occur in
  captions, and 32 dims keep the embedding table at 6 MB.

Sizes were chosen by measurement on a 2-core CPU (one thread): at batch 32 this UNet
(4.2 M parameters) trains at ~0.9 s/step; (48, 96, 192) channels were 1.5x slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["ToyModelConfig", "build_scheduler", "build_text_encoder", "build_unet", "build_vae", "seeded_init"]


@dataclass(frozen=True)
class ToyModelConfig:
    """Shapes of the toy model.

    Attributes:
        image_size: training resolution in pixels (scenes rendered at 128, downsampled).
        latent_channels: VAE latent channels (4, as Stable Diffusion).
        vae_channels: VAE block widths; len - 1 downsamplings (factor 4 for three blocks).
        unet_channels: UNet block widths, one cross-attention block per width.
        attention_heads: heads per UNet attention layer (diffusers' legacy `attention_head_dim`).
        text_hidden: text encoder width = UNet cross-attention dim.
        text_layers: text encoder transformer layers. 0 (the shipped model): a token's feature is
            its own embedding plus its position (then the final LayerNorm), so the end-of-text
            and padding tokens carry no summary of the caption and the UNet has to read the
            words. With 3 layers the first 1,000 steps learned flat cross-attention; with 1 the
            word-token cross-attention probe stayed at chance (mIoU 0.13-0.15) for 3,742 steps;
            cutting to 0 lifted it to 0.25 in 669 steps (docs/proving_ground.md).
        max_length: token length of prompts (77, CLIP / Stable Diffusion).
        prediction_type: "v_prediction" (Salimans & Ho 2022), trained with min-SNR weighting.
    """

    image_size: int = 64
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention_heads: int = 4
    text_hidden: int = 32
    text_layers: int = 0
    max_length: int = 77
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        if self.image_size % (2 ** (len(self.vae_channels) - 1)) != 0 or self.image_size < 16:
            raise ValueError(
                f"`image_size` must be >= 16 and divisible by the VAE factor "
                f"{2 ** (len(self.vae_channels) - 1)}, got {self.image_size}."
            )
        if self.text_layers < 0:
            raise ValueError(f"`text_layers` must be >= 0, got {self.text_layers}.")
        if len(self.unet_channels) < 2:
            raise ValueError(f"`unet_channels` needs at least 2 widths, got {self.unet_channels}.")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"`prediction_type` must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}.")

    @property
    def latent_size(self) -> int:
        """Latent side: image_size / 2^(len(vae_channels) - 1)."""
        return self.image_size // (2 ** (len(self.vae_channels) - 1))


@contextmanager
def seeded_init(generator: torch.Generator | None) -> Iterator[None]:
    """Build modules inside this to draw their initial weights from `generator`: module
    constructors draw from the global RNG, so it is forked (restored on exit) and seeded with one
    draw of `generator`. None: the global RNG as it is (still restored on exit)."""
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        yield


def _groups(channels: tuple[int, ...]) -> int:
    return min(16, min(channels) // 2)


def build_vae(config: ToyModelConfig, generator: torch.Generator | None = None):
    """Return a freshly initialised `diffusers.AutoencoderKL` (no mid-block attention: speed)."""
    from diffusers import AutoencoderKL

    with seeded_init(generator):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
            block_out_channels=config.vae_channels,
            layers_per_block=1,
            latent_channels=config.latent_channels,
            norm_num_groups=_groups(config.vae_channels),
            sample_size=config.image_size,
            mid_block_add_attention=False,
        )


def build_unet(config: ToyModelConfig, generator: torch.Generator | None = None):
    """Return a freshly initialised `diffusers.UNet2DConditionModel`."""
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    with seeded_init(generator):
        return UNet2DConditionModel(
            sample_size=config.latent_size,
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            layers_per_block=1,
            block_out_channels=config.unet_channels,
            norm_num_groups=_groups(config.unet_channels),
            attention_head_dim=config.attention_heads,
            cross_attention_dim=config.text_hidden,
            down_block_types=("CrossAttnDownBlock2D",) * n,
            up_block_types=("CrossAttnUpBlock2D",) * n,
        )


def build_text_encoder(config: ToyModelConfig, generator: torch.Generator | None = None):
    """Return a freshly initialised `transformers.CLIPTextModel` over the full CLIP vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffuseg.synthetic.tokenizer import CLIP_VOCAB_SIZE

    with seeded_init(generator):
        return CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=config.text_hidden,
                intermediate_size=4 * config.text_hidden,
                num_attention_heads=4,
                num_hidden_layers=config.text_layers,
                max_position_embeddings=config.max_length,
                bos_token_id=CLIP_VOCAB_SIZE - 2,  # <|startoftext|>
                eos_token_id=CLIP_VOCAB_SIZE - 1,  # <|endoftext|>
                pad_token_id=CLIP_VOCAB_SIZE - 1,
            )
        )


def build_scheduler(config: ToyModelConfig):
    """The training noise schedule: Stable Diffusion's (scaled_linear 0.00085-0.012, 1000 steps).

    DDIM with the same betas is what the pipeline samples with; `add_noise` matches training.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=config.prediction_type,
    )
