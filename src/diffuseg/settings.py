"""Validation of method settings, and the choice tuples configs share: torch-free.

Method configs (`diffuseg.methods.*_config`) validate their fields with these, so building a
config, or the command line's help from the configs' fields, imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LATENT_MODES",
    "TEXT_ENCODERS",
    "VOTINGS",
    "SEED_LIMIT",
    "SEG4DIFF_KL_THRESHOLD",
    "check_timestep",
    "check_positive",
    "check_layers",
    "check_text_encoders",
    "check_caption",
    "check_seed",
    "check_choice",
    "Resource",
    "SlidingWindow",
]

#: How the VAE posterior becomes the latent: its mean or a sample.
LATENT_MODES = ("mean", "sample")
#: The parts of a diffusion transformer's text axis a method may read class tokens in
#: (`diffuseg.backbone.mmdit_text.TextPart.encoder`): SD3's CLIP tokens, its (and FLUX's) T5 tokens.
TEXT_ENCODERS = ("clip", "t5")
#: How a segment picks its class from per-pixel class scores (`diffuseg.ops.votes`).
VOTINGS = ("mean", "majority")
#: Seeds are ints in [0, SEED_LIMIT): what `torch.Generator.manual_seed` takes, without the
#: negative aliases it wraps around (-1 is 2**64 - 1).
SEED_LIMIT = 2**64
#: Seg4Diff's KL threshold as its code runs (``self.kl_threshold = 0.1``).
SEG4DIFF_KL_THRESHOLD = 0.1


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """`value` if it is one of `choices`; raises `ValueError` naming `name` otherwise."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_timestep(timestep: Any, name: str = "timestep") -> int:
    """Validate a UNet timestep as a non-negative int (the model's upper bound is checked by
    `DiffusionBackbone.check_timestep`). Returns it; raises `ValueError` otherwise."""
    if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {timestep!r}.")
    return timestep


def check_positive(
    value: Any, name: str, *, integer: bool = False, allow_none: bool = False, allow_zero: bool = False
) -> Any:
    """Validate a finite number > 0 (>= 0 with `allow_zero`; an int with `integer`; None with
    `allow_none`). Rejects bools, NaN and infinities. Returns the value; raises `ValueError`."""
    if value is None and allow_none:
        return value
    kind = "an int" if integer else "a finite number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok_type
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        none = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be {kind} {bound}{none}, got {value!r}.")
    return value


def check_layers(value: Any, name: str = "layers") -> tuple[int, ...] | None:
    """Validate layer indices (`backbone.protocol.LayerMap.select`): None, an int or a non-empty
    sequence of ints (negative counts from the end). Returns None or a tuple; the model's own
    range is checked when the method plans its pass.

    Raises:
        ValueError: naming `name` and the value.
    """
    if value is None:
        return None
    values = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"`{name}` must be None or layer indices (ints, e.g. (2, 3)), got {value!r}.")
    return values


def check_text_encoders(value: Any, name: str = "text_encoders") -> tuple[str, ...] | None:
    """Validate a choice of text parts: None (the model's first part), one of `TEXT_ENCODERS`
    or a non-empty sequence of them. Returns None or a tuple without repeats; whether the model's
    prompts have those parts is checked when the method reads them.

    Raises:
        ValueError: naming `name`, the value and the allowed values.
    """
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if not values or any(v not in TEXT_ENCODERS for v in values):
        raise ValueError(f"`{name}` must be None or a non-empty tuple of {TEXT_ENCODERS}, got {value!r}.")
    return tuple(dict.fromkeys(values))


def check_caption(caption: Any) -> str | None:
    """Validate a caption: None (no caption) or a string with some text. Returns it.

    Raises:
        ValueError: naming `caption`, for another type or an empty or blank string (which a
            method would otherwise read as no caption, or as a prompt of nothing).
    """
    if caption is None:
        return None
    if not isinstance(caption, str):
        raise ValueError(f"`caption` must be a string or None, got {caption!r} ({type(caption).__name__}).")
    if not caption.strip():
        raise ValueError(f"`caption` is empty ({caption!r}); give text or leave the caption out.")
    return caption


def check_seed(seed: int, name: str = "seed") -> int:
    """`seed`, checked: an int in [0, `SEED_LIMIT`).

    Raises:
        ValueError: naming `name`, if it is not such an int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"`{name}` must be an int in [0, 2**64), got {seed!r}.")
    return seed


@dataclass(frozen=True)
class Resource:
    """An extra model a method declares (a CLIP labeller, a captioner, a fine-tuned UNet).

    The `Segmenter` loads each once, from what the user gives (an object, or a path / hub id
    passed to `load`), on the backbone's device.

    Attributes:
        name: key in the `resources` mapping (CLI: ``--NAME VALUE`` or ``--resource NAME=VALUE``).
        description: one line for help texts.
        load: ``load(value: str, device, dtype) -> object``, or None if only objects are taken.
        required: whether the method cannot run without it.
        default: ``default(backbone) -> str | None``: the value used when the user gives none
            (e.g. the checkpoint shipped for the toy model), or None.
    """

    name: str
    description: str
    load: Any = None
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class SlidingWindow:
    """Sliding-window inference: score `crop` x `crop` windows of the model input `stride`
    pixels apart and average the class scores where they overlap (`diffuseg.ops.windows`,
    mmseg's ``slide_inference``); carried by `diffuseg.plan.Query.window`.

    Attributes:
        crop: window side in model-input pixels (>= 1; the model needs a multiple of its size
            granularity, which the `Segmenter` checks). An input side shorter than `crop` is one
            window of that side's full length.
        stride: pixels between window starts, 1 <= stride <= crop.
    """

    crop: int
    stride: int

    def __post_init__(self) -> None:
        check_positive(self.crop, "window.crop", integer=True)
        check_positive(self.stride, "window.stride", integer=True)
        if self.stride > self.crop:
            raise ValueError(
                f"`window.stride` must be at most `window.crop` ({self.crop}) so that windows leave no gap, "
                f"got {self.stride}."
            )

    def __str__(self) -> str:
        return f"{self.crop},{self.stride}"
