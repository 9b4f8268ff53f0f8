"""Seg-diffusion building blocks: a UNet whose first convolution also reads a mask latent, an
invertible mask <-> latent encoding through the frozen VAE, and multi-resolution training noise.

Reference: QuantumScriptHub/Seg-diffusion@7e5e3c1 (Marigold-style fine-tuning of SD 2); see the
module docstrings for where diffuseg follows it and where it fixes it. Training and the
sampler method build on these.
"""

from .base import require_unet
from .masks import decode_masks, encode_masks, labels_from_probabilities
from .model import widen_conv_in
from .noise import pyramid_noise

__all__ = [
    "widen_conv_in", "encode_masks", "decode_masks", "labels_from_probabilities", "pyramid_noise", "require_unet",
]  # fmt: skip
