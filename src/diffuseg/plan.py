"""What a caller asks (`Query`) and what model work a method needs for it (`Pass`).

A `Query` is one image plus what the caller knows about it: class names (with synonyms, parsed
once into a `Vocabulary`), a caption, an id, facts for the result's meta (its source, its
seeds), and, for evaluation protocols, the model input size and framing they fix. The batch
engine (which ``diffuseg segment`` and ``diffuseg batch`` run), the eval runner and the demo all
hand queries to a `diffuseg.Segmenter`.

A method turns a query into a `Pass` (``plan(config, query, backbone, resources) -> Pass``): a frozen,
hashable description of the model work (preprocessing, `FeatureRequest`, timestep, prompts,
noise; or a multi-step `Sampler`), built with `Pass.for_query`, the one place where a query's
size and framing win over the method's own. The `Segmenter` batches queries whose passes are
equal into one model call and caches the recorded `Features` per pass, so re-segmenting with
other post-processing settings runs no model. Nothing outside a method reads its config fields.

A pass is as backbone-specific as its `FeatureRequest`: today that names diffusers UNet module
paths (``attn1`` / ``attn2`` patterns, block outputs), which methods find with the UNet layer
finders of `diffuseg.backbone.layers`. A request by role that a diffusion transformer could
also answer is not built yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .backbone.features import FeatureRequest
from .imageio import ImageInput, check_resize_mode
from .labeling.vocabulary import parse_classes
from .settings import (
    LATENT_MODES,
    Resource,
    SlidingWindow,
    check_caption,
    check_layers,
    check_positive,
    check_timestep,
)

__all__ = [
    "Query",
    "Pass",
    "Sampler",
    "Resource",
    "SlidingWindow",
    "image_only",
    "LATENT_MODES",
    "parse_classes",
    "check_timestep",
    "check_positive",
    "check_caption",
    "check_layers",
]


@dataclass(frozen=True, eq=False)
class Query:
    """One image and what the caller knows about it.

    Attributes:
        image: a path, PIL image, array (H, W[, C]) or float tensor (3, H, W) in [0, 1]; None
            only for a dry `plan` that validates a config before any image is read.
        classes: class names, each a tuple (name, synonym, ...); see
            `diffuseg.labeling.vocabulary.parse_classes`.
        caption: a caption or prompt for the image (a string with some text), or None.
        id: the caller's name for the image (file stem, dataset id; a string), copied into results.
        size: the model input side the caller fixes (evaluation protocols: 512 for DiffSeg's,
            1024 for DiffCut's), overriding the method's own size (`Pass.for_query`); None = the
            method's choice.
        resize_mode: how the image is fitted to the model input (`diffuseg.imageio.RESIZE_MODES`):
            "keep_aspect" (default: the whole image, longer side = the size, each side rounded to
            the model's multiple), "short_side" (the whole image, shorter side = the size),
            "squash" or "crop" (square centre crop).
        label_size: longer side of the grid the caller scores labels at, or None. Methods that
            compute labels at a chosen resolution (DiffCut's concept assignment) use it.
        meta: the caller's JSON-serialisable facts about the image (its source file, its seeds),
            copied into the result's `Segmentation.meta` after the segmenter's own.
        window: sliding-window inference (`diffuseg.settings.SlidingWindow`): the model input
            is scored in overlapping crops whose class scores are averaged (open-vocabulary
            methods only; `diffuseg.windowed`); None = the whole input in one pass.
    """

    image: ImageInput | None = None
    classes: tuple[tuple[str, ...], ...] = ()
    caption: str | None = None
    id: str | None = None
    size: int | None = None
    resize_mode: str = "keep_aspect"
    label_size: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    window: SlidingWindow | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", parse_classes(self.classes))
        if self.window is not None and not isinstance(self.window, SlidingWindow):
            raise ValueError(
                f"`window` must be a SlidingWindow(crop, stride) or None, got {type(self.window).__name__} "
                f"{self.window!r}."
            )
        check_caption(self.caption)
        if self.id is not None and not isinstance(self.id, str):
            raise ValueError(f"`id` must be a string or None, got {self.id!r} ({type(self.id).__name__}).")
        if not isinstance(self.meta, Mapping):
            raise ValueError(f"`meta` must be a mapping of JSON-serialisable facts, got {type(self.meta).__name__}.")
        check_positive(self.size, "size", integer=True, allow_none=True)
        check_positive(self.label_size, "label_size", integer=True, allow_none=True)
        check_resize_mode(self.resize_mode)

    @property
    def class_names(self) -> list[str]:
        """The display name of each class (the first of its synonyms)."""
        return [c[0] for c in self.classes]


@runtime_checkable
class Sampler(Protocol):
    """Multi-step model work (e.g. a mask-denoising sampler); must be hashable (a frozen dataclass).

    Called as ``sampler(backbone, pixels, pass_, resources, generator) -> Features`` with
    pixels (B, 3, H, W) float32 in [0, 1] at the model input size.
    """

    def __call__(self, backbone: Any, pixels: Any, pass_: Pass, resources: dict[str, Any], generator: Any) -> Any: ...


@dataclass(frozen=True)
class Pass:
    """The model work for one query; equal passes are batched and cached together.

    Attributes:
        request: what to record (`FeatureRequest`); empty = no model call (image-only methods).
        size: model input side (longer side for "keep_aspect", shorter for "short_side"); None = the image's own size
            for image-only passes, the model's native size for model passes. Plans set it (and
            `resize_mode`) with `for_query`: the query's size, else the method's.
        resize_mode: see `Query.resize_mode`.
        timestep: UNet timestep of the recorded call.
        prompts: the prompt(s) per image; with P prompts the image's latent runs P times in one
            batched UNet call (P rows of `Features`, in this order).
        token_weights: () or, per prompt, (token position, weight) pairs: those tokens' text
            embeddings are emphasised as Compel's ``(word)1.21`` does (see
            `DiffusionBackbone.encode_prompts`). Row data like `prompts`, not part of the batch key.
        add_noise: noise the latent to `timestep` (one draw per image, shared by its prompts).
        shared_noise: one noise draw for the whole batch (DiffCut's reference behaviour).
        latent_mode: VAE posterior "mean" or "sample".
        sampler: multi-step work that replaces the single recorded call, or None.
    """

    request: FeatureRequest = field(default_factory=FeatureRequest)
    size: int | None = None
    resize_mode: str = "keep_aspect"
    timestep: int = 0
    prompts: tuple[str, ...] = ("",)
    token_weights: tuple[tuple[tuple[int, float], ...], ...] = ()
    add_noise: bool = False
    shared_noise: bool = False
    latent_mode: str = "mean"
    sampler: Sampler | None = None

    def __post_init__(self) -> None:
        check_positive(self.size, "size", integer=True, allow_none=True)
        check_resize_mode(self.resize_mode)
        check_timestep(self.timestep)
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompts` must be a non-empty tuple of strings, got {self.prompts!r}.")
        object.__setattr__(self, "prompts", prompts)
        weights = tuple(tuple((int(i), float(w)) for i, w in row) for row in self.token_weights)
        if weights and len(weights) != len(prompts):
            raise ValueError(f"`token_weights` must have one entry per prompt ({len(prompts)}), got {len(weights)}.")
        object.__setattr__(self, "token_weights", weights)
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"`latent_mode` must be one of {LATENT_MODES}, got {self.latent_mode!r}.")
        if self.sampler is not None:
            hash(self.sampler)  # a TypeError here means the sampler is not a frozen dataclass

    @classmethod
    def for_query(cls, query: Query, image_size: int | None = None, **work: Any) -> Pass:
        """The pass for `query` with model work `work` (the other `Pass` fields): the model
        input is the query's size (`Query.size`, fixed by an evaluation protocol) if it has one,
        else the method's `image_size`, framed as the query says (`Query.resize_mode`). Every
        plan builds its pass here, so the rule lives in one place."""
        return cls(size=query.size or image_size, resize_mode=query.resize_mode, **work)

    @property
    def uses_model(self) -> bool:
        """Whether this pass runs the diffusion model at all."""
        return self.sampler is not None or not self.request.is_empty

    def row_weights(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        """`token_weights` with one (possibly empty) entry per prompt."""
        return self.token_weights or ((),) * len(self.prompts)

    def batch_key(self) -> tuple[Any, ...]:
        """Passes with equal keys share one model call (their prompts become rows)."""
        return (
            self.request,
            self.size,
            self.resize_mode,
            self.timestep,
            len(self.prompts),
            self.add_noise,
            self.shared_noise,
            self.latent_mode,
            self.sampler,
        )


def image_only(config: Any, query: Query, backbone: Any = None, resources: Any = None) -> Pass:
    """The plan of methods that read only the pixels (baselines): no model work, the image at
    the caller's size (`Query.size`) or its own, framed as the query says."""
    return Pass.for_query(query)
