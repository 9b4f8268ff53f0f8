"""Method options of ``segment``, ``batch``, ``eval`` and ``inspect``: one flag per config field
of every method (from the torch-free catalog, `diffuseg.methods.catalog`), the --method list,
and the options the user set, checked against the methods that take them.

The flags are kebab-case field names with default None, grouped per method with each default
and allowed values; only the options the user set reach the library, so the library default
(or the model's preset) is the only default.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config_fields import NONE, csv_parser, field_docs, field_kind, optional_parser, show_value

__all__ = [
    "add_method_options",
    "add_config_options",
    "config_overrides",
    "method_overrides",
    "method_help",
    "parse_methods",
]

#: Extra flags of some config fields.
_ALIASES = {"image_size": ["--size"]}


def _csv(elem: type, optional: bool = False) -> Any:
    """`csv_parser` as an argparse ``type``: its ValueError becomes an ArgumentTypeError, so
    argparse prints the message as it is ("expected comma-separated float values, got '0.5,x'")."""
    parse_values = csv_parser(elem, optional=optional)

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return parse_values(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = parse_values.__name__
    return parse


def _methods() -> list[Any]:
    """Every method's `MethodInfo` (name, description, config class), without loading one."""
    from ..methods.catalog import infos

    return infos()


def _method_fields() -> set[str]:
    return {f.name for spec in _methods() for f in dataclasses.fields(spec.config_cls)}


def method_help() -> str:
    """One line per registered method, for --method's help."""
    return "\n".join(f"  {s.name}: {s.description}" for s in _methods())


def add_method_options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Add one option per config field of every registered method (default None), grouped by
    method, with the library default and allowed values in the help.

    Returns:
        field name -> names of the methods that have it ("*" first if a general option of the
        same name, e.g. --seed, feeds it).
    """
    owners: dict[str, list[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for spec in _methods():
        docs = field_docs(spec.config_cls)
        for f in dataclasses.fields(spec.config_cls):
            owners.setdefault(f.name, []).append(spec.name)
            entry = info.setdefault(
                f.name,
                {
                    "kind": field_kind(f.type),
                    "doc": docs.get(f.name, ""),
                    "choices": f.metadata.get("choices"),
                    "type": f.type,
                    "defaults": {},
                },
            )
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            entry["defaults"][spec.name] = default
    taken = set(parser._option_string_actions)
    groups: dict[str, Any] = {}
    for field_name in sorted(owners, key=lambda n: (len(owners[n]) > 1, owners[n][0], n)):
        entry = info[field_name]
        flags = [f"--{field_name.replace('_', '-')}", *_ALIASES.get(field_name, [])]
        if flags[0] in taken:
            owners[field_name] = ["*", *owners[field_name]]
            continue
        key = owners[field_name][0] if len(owners[field_name]) == 1 else "shared"
        if key not in groups:
            title = f"{key} options" if key != "shared" else "options of several methods"
            groups[key] = parser.add_argument_group(
                title,
                "defaults are the library's (the paper's); `diffuseg env` lists the presets that "
                "replace some of them on other models"
                if key == "shared"
                else None,
            )
        defaults = entry["defaults"]
        shown = (
            ", ".join(f"{m} {show_value(v)}" for m, v in defaults.items())
            if key == "shared"
            else show_value(next(iter(defaults.values())))
        )
        help_ = f"{entry['doc']} (default: {shown}"
        if entry["choices"]:
            help_ += f"; one of {', '.join(map(str, entry['choices']))}"
        help_ += ")"
        kind, elem = entry["kind"]
        g = groups[key]
        if kind == "bool":
            g.add_argument(
                *flags,
                dest=field_name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_.replace("%", "%%"),
            )
        elif kind == "tuple":
            optional = "None" in str(entry["type"])
            g.add_argument(
                *flags, dest=field_name, type=_csv(elem, optional), default=None, metavar="V,V,...",
                help=(help_ + (" ('none' allowed)" if optional else "")).replace("%", "%%"),
            )  # fmt: skip
        else:
            optional = any(v is None for v in entry["defaults"].values()) or "None" in str(entry["type"])
            g.add_argument(
                *flags,
                dest=field_name,
                type=optional_parser(elem) if optional else elem,
                default=None,
                choices=entry["choices"],
                help=(help_ + (" ('none' allowed)" if optional else "")).replace("%", "%%"),
            )
    return owners


def add_config_options(parser: Any, config_cls: type, title: str | None = None) -> list[str]:
    """Add one option per field of the dataclass `config_cls` (default None = the library's
    default, shown in the help); returns the field names. Read them back with `config_overrides`."""
    docs = field_docs(config_cls)
    group = parser.add_argument_group(title) if title else parser
    names = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f"{docs.get(f.name, '')} (default: {show_value(default)})".replace("%", "%%")
        kind, elem = field_kind(f.type)
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind == "tuple":
            optional = "None" in str(f.type)
            group.add_argument(
                flag, dest=f.name, type=_csv(elem, optional), default=None, metavar="V,V,...", help=help_
            )
        else:
            optional = default is None or "None" in str(f.type)
            group.add_argument(
                flag,
                dest=f.name,
                type=optional_parser(elem) if optional else elem,
                default=None,
                choices=f.metadata.get("choices"),
                help=help_ + (" ('none' allowed)" if optional else ""),
            )
        names.append(f.name)
    return names


def config_overrides(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The options of `add_config_options` that the user set ('none' -> None)."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = None if value is NONE else value
    return out


def parse_methods(text: str) -> tuple[str, ...]:
    """--method's value: one method name or a comma-separated list of them.

    Raises:
        ValueError: naming --method, for an empty list, an unknown name (with the choices) or a
            name given twice.
    """
    known = [info.name for info in _methods()]
    names = tuple(n.strip() for n in str(text).split(","))
    if not all(names):
        raise ValueError(f"--method {text!r} has an empty name; give one method or a comma-separated list.")
    for name in names:
        if name not in known:
            raise ValueError(f"--method: unknown method {name!r}; choose from {', '.join(known)}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--method names {', '.join(repeated)} twice; give each method once.")
    return names


def method_overrides(
    args: argparse.Namespace, method: str, owners: dict[str, list[str]], among: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The method options the user set, checked against `method`.

    Args:
        among: all the methods of a run of several (`parse_methods`): an option that belongs
            to one of them is passed to those that have it.

    Raises:
        ValueError: if an option set by the user belongs to none of `method` and `among`.
    """
    out: dict[str, Any] = {}
    for field_name, methods in owners.items():
        value = getattr(args, field_name, None)
        if value is None:
            continue
        if "*" in methods:  # a general option (e.g. --seed): passed on where the method has the field
            if method in methods:
                out[field_name] = value
            continue
        if method not in methods:
            if any(m in methods for m in among):
                continue
            run = f"method {method!r}" if len(among) < 2 else f"methods {', '.join(among)}"
            raise ValueError(
                f"option --{field_name.replace('_', '-')} does not apply to {run} (it belongs to {', '.join(methods)})."
            )
        out[field_name] = None if value is NONE else value
    return out
