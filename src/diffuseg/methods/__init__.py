"""Segmentation methods: one module per method, each defining a `MethodSpec` (`spec.py`) from
the `MethodInfo` of its ``*_config`` module; `registry.py` lists them all (`METHODS`),
`catalog.py` their infos without loading them.

Methods never import each other; shared primitives live in `diffuseg.ops`. The names below are
imported on first use (PEP 562), so reading a config or the catalog loads no model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffuseg.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
