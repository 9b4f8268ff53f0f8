"""diffuseg: segment images with the internals of text-to-image diffusion models.

The public names are imported on first use (PEP 562), so ``import diffuseg`` and
``diffuseg --help`` stay fast; ``from diffuseg import Segmenter`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffuseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
