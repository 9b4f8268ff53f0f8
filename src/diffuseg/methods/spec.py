"""What a method is (`MethodSpec`); the methods themselves are listed in `diffuseg.methods.registry`.

A method is two functions and a config:

* ``plan(config, query, backbone, resources) -> Pass``: the model work one `Query` needs
  (backbone may be None for image-only methods; resources: the extra models the method
  declares, loaded, e.g. a captioner whose captions become prompts);
* ``segment(features, config, query, resources) -> Segmentation``: labels for that query from
  what the pass recorded (features of one image: one row per prompt of the pass).

Presets: the config defaults are the paper's, for the paper's model. `presets` maps a model
family (`DiffusionBackbone.family`: "sd1", "sd2", "sdxl", "toy", ...) to documented overrides
for other models; `make_config` applies the preset first and the caller's settings on top.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .info import KINDS, MethodInfo

if TYPE_CHECKING:
    from ..backbone.features import Features
    from ..plan import Pass, Query, Resource
    from ..types import Segmentation

__all__ = ["MethodSpec", "KINDS"]


@dataclass(frozen=True)
class MethodSpec:
    """How the library drives one method.

    Attributes:
        name: registry key and CLI name (lowercase).
        config_cls: the method's frozen config dataclass; default-constructible.
        plan: ``plan(config, query, backbone, resources) -> Pass``.
        segment: ``segment(features, config, query, resources) -> Segmentation``.
        kind: one of `KINDS`.
        description: one line for `--help` and `diffuseg env`.
        presets: model family -> config overrides for models other than the paper's.
        resources: extra models the method declares (`diffuseg.plan.Resource`).
        needs_classes: the method cannot run without class names in the `Query`.
        working_bytes: ``working_bytes(n) -> int``, the memory the segment step allocates for
            one image whose finest attention grid has n tokens (used with the recording's own
            size to refuse an input size that would not fit); None = negligible.
        score_maps: ``score_maps(features, config, query, resources) -> (K, H, W)`` float32
            class scores at the model input size (K = ``len(query.classes)``; a background
            class scores a constant), whose per-pixel argmax (first index on ties,
            `diffuseg.ops.masks.argmax0`) are `segment`'s labels and whose mean per label
            (`diffuseg.ops.masks.mean_score_per_label`) are its scores. Sliding-window inference
            (`diffuseg.windowed`) averages these over crops; None = the method has no class
            scores and cannot run in windows.
    """

    name: str
    config_cls: type
    plan: Callable[[Any, Query, Any, Mapping[str, Any]], Pass]
    segment: Callable[[Features, Any, Query, Mapping[str, Any]], Segmentation]
    kind: str = "unsupervised"
    description: str = ""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    resources: tuple[Resource, ...] = ()
    needs_classes: bool = False
    working_bytes: Callable[[int], int] | None = None
    score_maps: Callable[[Features, Any, Query, Mapping[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")

    @property
    def open_vocabulary(self) -> bool:
        """True if the method names its segments from the query's class names."""
        return self.kind == "open-vocabulary"

    @property
    def names_segments(self) -> bool:
        """True if an unsupervised method can name its segments from class names (its config
        has a ``label`` field, `diffuseg.labeling.naming.LABELS`)."""
        return any(f.name == "label" for f in dataclasses.fields(self.config_cls))

    def preset(self, family: str | None) -> dict[str, Any]:
        """The documented config overrides for model `family` (empty for the paper's model)."""
        return dict(self.presets.get(family or "", {}))

    def make_config(self, family: str | None = None, **overrides: Any) -> Any:
        """The config: the method's defaults, then the preset of `family`, then `overrides`.

        Raises:
            ValueError: on an unknown field name, or a value the config rejects.
        """
        self.check_fields(overrides)
        return self.config_cls(**{**self.preset(family), **overrides})

    def check_fields(self, overrides: Mapping[str, Any]) -> None:
        """Raise `ValueError` naming the fields of `overrides` that the config does not have."""
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {self.name!r}; allowed: {sorted(known)}.")

    @classmethod
    def from_info(cls, info: MethodInfo, **how: Any) -> MethodSpec:
        """The spec of the method `info` describes (name, kind, description, config class),
        run as `how` says (plan, segment, presets, resources, ...)."""
        return cls(
            name=info.name,
            config_cls=info.config_cls,
            kind=info.kind,
            description=info.description,
            resources=info.resources,
            **how,
        )

    def probe_query(self) -> Query:
        """A query without an image, for dry plans that validate a config (one placeholder
        class name for methods that need class names)."""
        from ..plan import Query

        return Query(classes=(("object",),) if self.needs_classes else ())

    def needs_model(self, config: Any) -> bool:
        """Whether `config`'s passes run the diffusion model (a plan without a backbone)."""
        try:
            return self.plan(config, self.probe_query(), None, {}).uses_model
        except ValueError:  # the plan itself needs the backbone
            return True

    def run(self, features: Features, config: Any, query: Query, resources: Mapping[str, Any]) -> Segmentation:
        """Segment one query from its features; fills in the method and its config. ``meta`` keeps
        the method's own facts: the `Segmenter` composes a result's meta (`Segmenter._result_meta`)."""
        seg = self.segment(features, config, query, resources)
        seg.method = self.name
        seg.config = config
        return seg
