"""diffuseg: segment images with the internals of text-to-image diffusion models."""

from ._version import __version__
from .backbone import DiffusionBackbone, FeatureRequest, Features
from .methods import get_method, list_methods
from .segmenter import Segmenter
from .types import Segmentation

__all__ = [
    "__version__",
    "DiffusionBackbone",
    "FeatureRequest",
    "Features",
    "Segmentation",
    "Segmenter",
    "get_method",
    "list_methods",
]
