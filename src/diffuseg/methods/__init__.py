"""Segmentation methods: one module per method, each defining a `MethodSpec` (`spec.py`);
`registry.py` lists them all (`METHODS`).

Methods never import each other; shared primitives live in `diffuseg.ops`.
"""

from .registry import METHODS, get_method, list_methods
from .spec import KINDS, MethodSpec

__all__ = ["KINDS", "METHODS", "MethodSpec", "get_method", "list_methods"]
