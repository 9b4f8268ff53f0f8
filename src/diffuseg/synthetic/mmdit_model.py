"""Architecture of the proving-ground diffusion transformer ("toy-mmdit").

Stable Diffusion 3 in miniature, built from the ordinary diffusers / transformers classes so that
the shipped folder is a plain ``StableDiffusion3Pipeline`` folder that the MM-DiT backbone loads
like any SD3 checkpoint:

* the toy UNet's `AutoencoderKL` (factor 4, 4 latent channels), reused as trained
  (`build_vae_from` adds the ``shift_factor`` SD3 pipelines read);
* an `SD3Transformer2DModel` (joint attention over image and text tokens, patch 2): 128 px
  scenes -> 32 x 32 latents -> 16 x 16 image tokens;
* SD3's three text encoders: two `CLIPTextModelWithProjection` (CLIP-L, CLIP-G) and a
  `T5EncoderModel`, all over the real CLIP vocabulary (the toy has no T5 vocabulary; the T5 part
  is spelled with CLIP's BPE, which the SD3 pipeline accepts). As in the toy UNet, the text
  encoders do not mix tokens: the CLIP encoders have one layer, whose *input* (the penultimate
  hidden state SD3 reads) is a token's embedding plus its position, and T5 has no layer at all, so
  the image tokens must read the words themselves (docs/proving_ground.md).

Prompts are 32 tokens per part (captions have at most 26), so the text axis is 64 columns:
CLIP 0-31 then T5 32-63, the layout of SD3's 77 + 256.

Sizes were chosen by measurement on a 2-core CPU: at batch 32 the default transformer (6 blocks,
96 wide, 1.96 M parameters) takes ~0.5 s per plain training step (0.8-1.1 s with the grounding
loss and the text encoders); 128 wide (3.46 M) was 1.6x slower and would have taken the package
to about 28 of its 30 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffuseg.synthetic.model import seeded_init

__all__ = [
    "ToyMMDiTConfig",
    "build_mmdit_scheduler",
    "build_mmdit_text_encoders",
    "build_mmdit_tokenizer",
    "build_transformer",
    "build_vae_from",
]


@dataclass(frozen=True)
class ToyMMDiTConfig:
    """Shapes of the toy diffusion transformer.

    Attributes:
        image_size: training resolution in pixels: the scenes' own 128 (no resize), so the
            positions a method reads at the eval size are the ones it was trained on.
        patch_size: latent pixels per token side (SD3's 2).
        num_layers: joint transformer blocks (SD3-medium: 24).
        heads / head_dim: attention heads and their width (SD3: 64-wide heads).
        clip_hidden: width of each CLIP encoder; SD3 concatenates CLIP-L and CLIP-G features, so
            a CLIP token's feature has 2 x `clip_hidden` channels.
        t5_hidden: T5 width = the transformer's ``joint_attention_dim`` (CLIP features are
            zero-padded to it, as in SD3).
        text_tokens: tokens per prompt in each part (CLIP's ``model_max_length`` and SD3's
            ``max_sequence_length`` for T5).
        pos_embed_max_size: side of the fixed sin-cos position grid, in tokens (inputs up to
            ``pos_embed_max_size * patch_size * 4`` pixels; SD3 crops its centre as well).
    """

    image_size: int = 128
    patch_size: int = 2
    num_layers: int = 6
    heads: int = 4
    head_dim: int = 24
    clip_hidden: int = 8
    t5_hidden: int = 16
    text_tokens: int = 32
    pos_embed_max_size: int = 64

    def __post_init__(self) -> None:
        for name in ("patch_size", "num_layers", "heads", "head_dim", "clip_hidden", "t5_hidden", "text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if 2 * self.clip_hidden > self.t5_hidden:
            raise ValueError(
                f"the CLIP features (2 x `clip_hidden` = {2 * self.clip_hidden}) must fit `t5_hidden` "
                f"{self.t5_hidden}: SD3 pads them to the T5 width."
            )

    @property
    def width(self) -> int:
        """Transformer width: heads x head_dim."""
        return self.heads * self.head_dim


def build_transformer(config: ToyMMDiTConfig, latent_channels: int, generator: torch.Generator | None = None):
    """A fresh `SD3Transformer2DModel` with adaLN-Zero initialisation.

    diffusers initialises the modulation and output layers like any linear layer; DiT (Peebles &
    Xie 2023, §3.2) zero-initialises them so that every block starts as the identity, which
    trained faster for them and lets a short CPU run start from a model that predicts 0.
    """
    from diffusers import SD3Transformer2DModel

    with seeded_init(generator):
        model = SD3Transformer2DModel(
            sample_size=config.image_size // 4,
            patch_size=config.patch_size,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_layers=config.num_layers,
            attention_head_dim=config.head_dim,
            num_attention_heads=config.heads,
            joint_attention_dim=config.t5_hidden,
            caption_projection_dim=config.width,
            pooled_projection_dim=2 * config.clip_hidden,
            pos_embed_max_size=config.pos_embed_max_size,
        )
    zero = [model.norm_out.linear, model.proj_out]
    for block in model.transformer_blocks:
        zero += [block.norm1.linear, block.norm1_context.linear]
    with torch.no_grad():
        for layer in zero:
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def build_mmdit_text_encoders(config: ToyMMDiTConfig, generator: torch.Generator | None = None):
    """(CLIP-L, CLIP-G, T5) text encoders over the CLIP vocabulary (see the module docstring)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from diffuseg.synthetic.tokenizer import CLIP_VOCAB_SIZE

    with seeded_init(generator):
        clips = [
            CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=CLIP_VOCAB_SIZE,
                    hidden_size=config.clip_hidden,
                    intermediate_size=4 * config.clip_hidden,
                    num_attention_heads=2,
                    num_hidden_layers=1,
                    projection_dim=config.clip_hidden,
                    max_position_embeddings=config.text_tokens,
                    bos_token_id=CLIP_VOCAB_SIZE - 2,
                    eos_token_id=CLIP_VOCAB_SIZE - 1,
                    pad_token_id=CLIP_VOCAB_SIZE - 1,
                )
            )
            for _ in range(2)
        ]
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=CLIP_VOCAB_SIZE,
                d_model=config.t5_hidden,
                d_kv=config.t5_hidden // 2,
                d_ff=4 * config.t5_hidden,
                num_layers=0,
                num_heads=2,
                pad_token_id=CLIP_VOCAB_SIZE - 1,
                eos_token_id=CLIP_VOCAB_SIZE - 1,
            )
        )
    return clips[0], clips[1], t5


def build_mmdit_tokenizer(config: ToyMMDiTConfig):
    """The CLIP tokenizer padded to `text_tokens` (used for all three parts)."""
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(model_max_length=config.text_tokens)


def build_mmdit_scheduler():
    """SD3's scheduler: rectified flow, 1000 training steps, no resolution shift at this size."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_vae_from(folder):
    """The toy UNet's VAE from `folder`, with ``shift_factor`` 0 (SD3 pipelines subtract it)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder)
    vae.register_to_config(shift_factor=0.0)
    return vae
