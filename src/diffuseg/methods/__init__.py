"""Segmentation methods. Each module here defines `SPEC` (a `MethodSpec`) and joins the registry.

Methods never import each other; shared primitives live in `diffuseg.ops`.
"""

from ._registry import KINDS, METHODS, MethodSpec, get_method, list_methods

__all__ = ["KINDS", "METHODS", "MethodSpec", "get_method", "list_methods"]
