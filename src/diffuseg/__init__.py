"""diffuseg: segment images with the internals of text-to-image diffusion models."""

from ._version import __version__
from .types import Segmentation

__all__ = ["__version__", "Segmentation"]
