"""The demo's settings controls, generated from the method config dataclasses.

One `Control` per config field, with the same parsing as the CLI's generated flags
(`diffuseg.config_fields`: comma-separated tuples, "none" for optional fields, the
field's ``choices`` metadata) and the same defaults: the method's config for the loaded model,
its documented preset applied (`MethodSpec.make_config(family)`). Nothing here imports Gradio;
`diffuseg.demo.app` turns each `Control` into a component of the matching `Control.kind`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config_fields import NONE, csv_parser, field_docs, field_kind, optional_parser, show_value
from ..methods import MethodSpec

__all__ = ["Control", "CONTROL_KINDS", "method_controls", "pass_fields", "settings_overrides"]

#: How a control is shown: a checkbox (bool), a dropdown (a one-value field with ``choices``), a
#: number (a required int / float) or a text box (tuples as "v,v,v", their ``choices`` checked by
#: the config; optional fields, where "none" is allowed; strings).
CONTROL_KINDS = ("checkbox", "dropdown", "number", "text")


@dataclass(frozen=True)
class Control:
    """One config field as a UI control.

    Attributes:
        method: the method's registry name.
        name: the config field.
        kind: one of `CONTROL_KINDS`.
        default: the UI value of the field in the config for the loaded model (preset applied).
        info: the first clause of the field's documentation.
        choices: allowed values of a dropdown, else None.
        integer: a number control that takes integers.
    """

    method: str
    name: str
    kind: str
    default: Any
    info: str = ""
    choices: tuple[Any, ...] | None = None
    integer: bool = False
    _parse: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """The field name as a label ("kl_thresholds" -> "kl thresholds")."""
        return self.name.replace("_", " ")

    def parse(self, value: Any) -> Any:
        """The config value of a UI value (a text box's "0.1,0.1" -> (0.1, 0.1); "none" -> None).

        Raises:
            ValueError: naming the control and the value, and what it takes.
        """
        if self.kind in ("checkbox", "dropdown"):
            return value
        if self.kind == "number":
            if value is None or value == "":
                raise ValueError(f"`{self.name}` needs a number; the box is empty.")
            number = float(value)
            if self.integer:
                if number != int(number):
                    raise ValueError(f"`{self.name}` takes a whole number, got {value!r}.")
                return int(number)
            return number
        text = "" if value is None else str(value)
        try:
            parsed = self._parse(text) if self._parse is not None else text
        except ValueError as e:
            raise ValueError(f"`{self.name}`: cannot read {text!r} ({e}).") from None
        return None if parsed is NONE else parsed


def _control(spec: MethodSpec, f: dataclasses.Field, value: Any, doc: str) -> Control:
    kind, elem = field_kind(f.type)
    choices = f.metadata.get("choices")
    if kind == "bool":
        return Control(spec.name, f.name, "checkbox", bool(value), doc)
    if choices and kind != "tuple":
        return Control(spec.name, f.name, "dropdown", value, doc, tuple(choices))
    optional = value is None or "None" in str(f.type)
    if kind == "scalar" and elem in (int, float) and not optional:
        return Control(spec.name, f.name, "number", value, doc, integer=elem is int)
    if kind == "tuple":
        parse = csv_parser(elem, optional=optional)
    elif optional:
        parse = optional_parser(elem)
    else:
        parse = None  # a plain string
    shown = "none" if value is None else (show_value(value) if kind == "tuple" else str(value))
    return Control(spec.name, f.name, "text", shown, doc, _parse=parse)


def method_controls(spec: MethodSpec, family: str | None) -> list[Control]:
    """One `Control` per config field of `spec`, defaults from its config for model `family`."""
    config = spec.make_config(family)
    docs = field_docs(spec.config_cls)
    return [
        _control(spec, f, getattr(config, f.name), docs.get(f.name, "")) for f in dataclasses.fields(spec.config_cls)
    ]


class _Unread:
    """Stands in for a config field to find out whether a plan reads it: any use raises."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise _FieldRead

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _refuse
    __iter__ = __len__ = __index__ = __int__ = __float__ = __str__ = __format__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __mod__ = __pow__ = __neg__ = __getitem__ = __contains__ = __call__ = _refuse


class _FieldRead(Exception):
    pass


def pass_fields(
    spec: MethodSpec, config: Any, query: Any, backbone: Any, resources: Mapping[str, Any]
) -> frozenset[str] | None:
    """The fields of `config` that `query`'s model pass depends on: a change to one of them
    runs the model again, a change to any other re-segments the cached features.

    Found by planning `query` with each field in turn replaced by a stand-in that refuses every
    use: a field is a pass field when the plan then fails or differs from the plan of `config`
    (`MethodSpec.plan` is the only place that turns settings into a pass).

    Returns:
        the field names, or None when `config` itself cannot be planned for `query` (e.g. no
        backbone): then nothing can be told.
    """
    names = [f.name for f in dataclasses.fields(config)]
    try:
        reference = spec.plan(config, query, backbone, resources)
    except Exception:  # noqa: BLE001 - any failure: nothing can be told
        return None
    found = set()
    for name in names:
        probe = copy.copy(config)
        object.__setattr__(probe, name, _Unread())
        try:
            same = spec.plan(probe, query, backbone, resources) == reference
        except Exception:  # noqa: BLE001 - the plan used the field (_FieldRead, or a failure it caused)
            same = False
        if not same:
            found.add(name)
    return frozenset(found)


def settings_overrides(controls: list[Control], values: Mapping[str, Any]) -> dict[str, Any]:
    """The config overrides of the UI `values` (field name -> UI value): only the fields whose
    value differs from the control's default, so the model's preset stays the only default.

    Raises:
        ValueError: for a value its control cannot read (naming the field).
    """
    out: dict[str, Any] = {}
    for control in controls:
        if control.name not in values:
            continue
        value = control.parse(values[control.name])
        if value != control.parse(control.default):
            out[control.name] = value
    return out
