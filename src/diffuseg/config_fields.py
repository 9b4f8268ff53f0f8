"""A method's config dataclass read as user settings: each field's kind, its one-line
documentation, the parsers of the text a user types for it, and the value shown back.

The CLI's generated method options (`diffuseg.commands._options`) and the demo's controls
(`diffuseg.demo.controls`) are both built from these, so a setting reads the same in both:
tuples as comma-separated values ("0.1,0.2"), "none" for a field that may be None (`NONE`),
and defaults written back by `show_value`. Nothing here knows about argparse or Gradio; the
parsers raise `ValueError`.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["FIELD_KINDS", "NONE", "field_kind", "field_docs", "optional_parser", "csv_parser", "show_value"]

#: The kinds `field_kind` tells apart: a flag, one value, a tuple of values.
FIELD_KINDS = ("bool", "scalar", "tuple")


def field_kind(tp: Any) -> tuple[str, Any]:
    """The kind of a config field and the type of its values.

    Args:
        tp: a dataclass field's annotation (``dataclasses.Field.type``), a type or, under
            ``from __future__ import annotations``, its text ("tuple[float, ...]", "int | None").

    Returns:
        (kind, element type): kind is one of `FIELD_KINDS`; the element type is ``bool`` for a
        flag, the type of one item for a tuple, the type without None for a scalar (int, float
        or str when read from text; unknown names read as str).
    """
    if isinstance(tp, str):
        t = tp.replace(" ", "")
        if t.startswith("bool"):
            return "bool", bool
        base = t.split("|")[0]
        elem = {"int": int, "float": float, "str": str}
        if base.startswith("tuple["):
            inner = base[len("tuple[") :].split(",")[0].rstrip("]")
            return "tuple", elem.get(inner, str)
        return "scalar", elem.get(base, str)
    if tp is bool:
        return "bool", bool
    if typing.get_origin(tp) is tuple:
        return "tuple", typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return "scalar", (args[0] if args else tp)


def field_docs(cls: type) -> dict[str, str]:
    """The documentation of each field of a config class, one clause per field.

    Args:
        cls: a class whose docstring has a Google-style "Attributes:" section (entries
            ``name: text`` indented by 8 spaces, continuation lines deeper).

    Returns:
        field name -> the entry's text, whitespace collapsed, up to its first ". " or "; "
        outside parentheses and brackets. Fields without an entry are absent.
    """
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s{8}(\w+): (.+?)(?=^\s{8}\w+: |\Z|^\s*$)", doc, re.S | re.M):
        out[m.group(1)] = _first_clause(" ".join(m.group(2).split()))
    return out


def _first_clause(text: str) -> str:
    """Text up to the first ". " or "; " outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if depth == 0 and ch in ".;" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i]
    return text


class _NoneValue:
    """What 'none' parses to for a field that may be None (None itself means "not set")."""

    def __repr__(self) -> str:
        return "none"


#: The parsed value of "none" (`optional_parser`): the user asks for None, which is not the
#: same as leaving the field unset (then the config's or the model's default holds).
NONE = _NoneValue()


def optional_parser(elem: type) -> Callable[[str], Any]:
    """A parser of one value of type `elem` that also accepts "none" (any case, spaces around).

    Args:
        elem: the value type, a callable of one string (int, float, str).

    Returns:
        parse(text) -> `NONE` for "none", else ``elem(text)``; a ValueError of `elem` passes
        through. Its ``__name__`` is `elem`'s (argparse names it in "invalid int value").
    """

    def parse(text: str) -> Any:
        return NONE if text.strip().lower() == "none" else elem(text)

    parse.__name__ = elem.__name__
    return parse


def csv_parser(elem: type, optional: bool = False) -> Callable[[str], Any]:
    """A parser of comma-separated values of type `elem` ("0.1, 0.2" -> (0.1, 0.2)).

    Args:
        elem: the type of each value, a callable of one string (int, float, str).
        optional: also accept "none" (any case, spaces around) as `NONE`, for a field that may
            be None (e.g. ``layers``: None = every layer).

    Returns:
        parse(text) -> a tuple of ``elem(part)`` for each comma-separated, stripped part. It
        raises ValueError("expected comma-separated values, got '...'") for an empty part (or
        empty text) and ValueError("expected comma-separated <elem> values, got '...'") when
        `elem` rejects a part. Its ``__name__`` is "comma-separated <elem>".
    """

    def parse(text: str) -> Any:
        if optional and text.strip().lower() == "none":
            return NONE
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise ValueError(f"expected comma-separated values, got {text!r}")
        try:
            return tuple(elem(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected comma-separated {elem.__name__} values, got {text!r}") from None

    parse.__name__ = f"comma-separated {elem.__name__}"
    return parse


def show_value(value: Any) -> str:
    """A config value as the user types it.

    Args:
        value: a field's value.

    Returns:
        '""' for the empty string, tuples comma-separated ("0.1,0.2"), "none (see the method)"
        for None, else ``str(value)``.
    """
    if value == "":
        return '""'
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "none (see the method)" if value is None else str(value)
