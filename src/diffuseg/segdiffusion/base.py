"""The base model Seg-diffusion needs: a UNet text-to-image model.

Seg-diffusion widens the base model's UNet (`widen_conv_in`), fine-tunes it on mask latents and
samples with the base's VAE, scheduler and SDXL added conditioning: it is UNet-only. Other
`Backbone`s (the diffusion transformers SD3 / SD3.5 / FLUX) are refused up front with a message
that says so, rather than failing later on a missing ``unet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..backbone.backbone import UNET_FAMILIES

if TYPE_CHECKING:
    from ..backbone.backbone import DiffusionBackbone

__all__ = ["require_unet"]


def require_unet(backbone: Any) -> DiffusionBackbone:
    """`backbone` itself if it is a UNet model (it has a ``unet`` and its ``family`` is one of
    the UNet families `backbone.UNET_FAMILIES`: sd1, sd2, sdxl, toy, other).

    Raises:
        ValueError: naming the model and its family, for any other backbone (e.g. family "sd3",
            "sd35" or "flux", or no ``unet``).
    """
    family = getattr(backbone, "family", None)
    if getattr(backbone, "unet", None) is not None and family in UNET_FAMILIES:
        return backbone
    name = getattr(backbone, "name", None) or type(backbone).__name__
    raise ValueError(
        f"Seg-diffusion needs a UNet model (SD 1.x/2.x/SDXL): it fine-tunes and samples the base model's UNet, "
        f"and {name!r} (family {family!r}) has none."
    )
