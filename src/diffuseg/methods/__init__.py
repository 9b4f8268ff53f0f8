"""Segmentation methods: one module per method, each defining a `MethodSpec` (`spec.py`) from
the `MethodInfo` of its ``*_config`` module; `registry.py` lists them all (`METHODS`),
`catalog.py` their infos without loading them.

Methods never import each other; shared primitives live in `diffuseg.ops`. The names below are
imported on first use (PEP 562), so reading a config or the catalog loads no model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .registry import METHODS, get_method, list_methods
    from .spec import KINDS, MethodSpec

#: public name -> module that defines it
_EXPORTS = {
    "KINDS": ".info",
    "METHODS": ".registry",
    "MethodSpec": ".spec",
    "get_method": ".registry",
    "list_methods": ".registry",
}

__all__ = ["KINDS", "METHODS", "MethodSpec", "get_method", "list_methods"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
