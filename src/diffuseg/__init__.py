"""diffuseg: segment images with the internals of text-to-image diffusion models.

The public names are imported on first use (PEP 562), so ``import diffuseg`` and
``diffuseg --help`` stay fast; ``from diffuseg import Segmenter`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .backbone import DiffusionBackbone, FeatureRequest, Features
    from .methods import get_method, list_methods
    from .multi import MultiSegmenter
    from .plan import Pass, Query
    from .segmenter import Segmenter
    from .types import Segmentation

#: public name -> module that defines it
_EXPORTS = {
    "DiffusionBackbone": ".backbone",
    "FeatureRequest": ".backbone",
    "Features": ".backbone",
    "MultiSegmenter": ".multi",
    "Pass": ".plan",
    "Query": ".plan",
    "Segmentation": ".types",
    "Segmenter": ".segmenter",
    "get_method": ".methods",
    "list_methods": ".methods",
}

__all__ = [
    "__version__",
    "DiffusionBackbone",
    "FeatureRequest",
    "Features",
    "MultiSegmenter",
    "Pass",
    "Query",
    "Segmentation",
    "Segmenter",
    "get_method",
    "list_methods",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
