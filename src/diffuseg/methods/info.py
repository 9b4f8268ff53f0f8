"""What the command line shows of a method without loading it (`MethodInfo`): torch-free.

Each method's ``*_config`` module defines its `MethodInfo` beside its config; the method module
builds its `MethodSpec` from it (`MethodSpec.from_info`), so the name, kind and description have
one home, and `catalog.INFOS` lists them for help texts and option parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MethodInfo", "KINDS"]

#: What a method is, for help texts, reports and the default label matching in eval.
KINDS = ("unsupervised", "open-vocabulary", "baseline")


@dataclass(frozen=True)
class MethodInfo:
    """A method's name, kind, one-line description and config class.

    Attributes:
        name: registry key and CLI name (lowercase).
        kind: one of `KINDS`.
        description: one line for `--help` and `diffuseg env`.
        config_cls: the method's frozen config dataclass; default-constructible.
        resources: the extra models it declares (`diffuseg.settings.Resource`).
    """

    name: str
    kind: str
    description: str
    config_cls: type
    resources: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
