"""Lazy package facades (PEP 562): a package's public names imported on first use, so importing
the package (and the CLI's ``--help``) loads none of the modules behind them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a lazy package.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the (relative) module that defines it.
        names: the package's ``__all__``.

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name's module on first use and keeps the
        value in the package's namespace (later lookups do not come back); the second lists `names`.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
