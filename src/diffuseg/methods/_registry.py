"""The method registry: every module in `diffuseg.methods` that defines `SPEC` joins it."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..backbone.features import FeatureRequest, Features
from ..types import Segmentation

__all__ = ["MethodSpec", "METHODS", "get_method", "list_methods"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    """How the library drives one method.

    Attributes:
        name: registry key and CLI name (lowercase).
        config_cls: the method's frozen config dataclass; default-constructible.
        segment: ``segment(features, config) -> Segmentation`` for a batch of ONE image.
        requires: a `FeatureRequest`, or a callable ``(unet) -> FeatureRequest`` for requests
            that depend on the UNet's structure (e.g. "the last down block with attention").
            An empty request means the method needs only the image (baselines).
        open_vocabulary: True if the method names its segments from class names / a prompt.
        description: one line for `--help` and `diffuseg env`.
        extraction_fields: config fields that change the UNet pass (timestep, image size,
            prompt, noise...). Changing only other fields re-uses the recorded features.
    """

    name: str
    config_cls: type
    segment: Callable[..., Segmentation]
    requires: FeatureRequest | Callable[[nn.Module], FeatureRequest] = field(
        default_factory=FeatureRequest
    )
    open_vocabulary: bool = False
    description: str = ""
    extraction_fields: tuple[str, ...] = ()

    def request_for(self, unet: nn.Module | None) -> FeatureRequest:
        """The `FeatureRequest` for this method on `unet`."""
        if isinstance(self.requires, FeatureRequest):
            return self.requires
        if unet is None:
            raise ValueError(f"method {self.name!r} needs a UNet to build its feature request.")
        return self.requires(unet)

    def make_config(self, **overrides: Any) -> Any:
        """The default config with `overrides` applied (validated by the dataclass).

        Raises:
            ValueError: on an unknown field name.
        """
        import dataclasses

        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method {self.name!r}; allowed: {sorted(known)}."
            )
        return self.config_cls(**overrides)

    def run(self, features: Features, config: Any) -> Segmentation:
        """Segment image 0 of `features` with `config`; fills in method, config and the image's
        meta data (input size, crop box) on the result."""
        seg = self.segment(features, config)
        seg.method = self.name
        seg.config = config
        seg.meta = {**(features.meta[0] if features.meta else {}), **seg.meta}
        return seg


def _discover() -> dict[str, MethodSpec]:
    from .. import methods as package

    found: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, MethodSpec):
            if spec.name in found:
                raise RuntimeError(f"two methods register the name {spec.name!r}.")
            found[spec.name] = spec
    return found


METHODS: dict[str, MethodSpec] = {}


def _ensure_loaded() -> dict[str, MethodSpec]:
    if not METHODS:
        METHODS.update(_discover())
    return METHODS


def get_method(name: str) -> MethodSpec:
    """The registered method called `name`.

    Raises:
        ValueError: if no method has that name (the message lists the known ones).
    """
    methods = _ensure_loaded()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(methods)}.")
    return methods[name]


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_ensure_loaded())
