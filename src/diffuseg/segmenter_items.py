"""What `Segmenter` and `MultiSegmenter` share about the queries they are given: a `Query` from
a bare image, the check of a batch of queries, the check of a segmenter's arguments, and one
query's prepared image (`Item`) with its pass."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backbone.backbone import FAMILIES
from .imageio import ImageInput
from .plan import Pass, Query

__all__ = ["Item", "as_queries", "as_query", "check_arguments", "image_digest"]


def as_query(item: Query | ImageInput) -> Query:
    """A `Query` as given, or one wrapping a bare image."""
    return item if isinstance(item, Query) else Query(image=item)


def as_queries(queries: Any) -> list[Query]:
    """`segment_batch`'s queries as a list of `Query`.

    Raises:
        ValueError: naming `queries`, for one image or query given on its own (a path would be
            read letter by letter, an (H, W, 3) array row by row).
    """
    one_array = isinstance(queries, (np.ndarray, torch.Tensor)) and queries.ndim <= 3
    if one_array or isinstance(queries, (str, os.PathLike, Query, Image.Image)):
        raise ValueError(
            f"`queries` must be a sequence of queries or images, got one {type(queries).__name__}; "
            "segment one image with `segmenter(image)` or give a list."
        )
    return [as_query(q) for q in queries]


def image_digest(pixels: torch.Tensor) -> str:
    """The SHA-1 of a pixel tensor's bytes: the key features are cached under, per image."""
    return hashlib.sha1(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def check_arguments(backbone: Any, resources: Any, preset: Any, probe: Any) -> None:
    """Check the types of `Segmenter`'s arguments that are used later (a wrong one would fail
    deep inside, at the first image).

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if isinstance(backbone, (str, os.PathLike)):
        raise ValueError(
            f"`backbone` must be a loaded model or None, got the {type(backbone).__name__} {str(backbone)!r}; "
            "load it first: `diffuseg.backbone.load_backbone(...)`."
        )
    if resources is not None and not isinstance(resources, Mapping):
        raise ValueError(
            f"`resources` must be a mapping of resource name -> model or path, got {type(resources).__name__} "
            f"{resources!r}."
        )
    if preset is not None and preset != "" and preset not in FAMILIES:
        raise ValueError(
            f"`preset` must be a model family of {FAMILIES}, '' (none: the paper's defaults) or None (the "
            f"backbone's family), got {preset!r}."
        )
    if probe is not None and not isinstance(probe, Query):
        raise ValueError(f"`probe` must be a Query (without an image) or None, got {type(probe).__name__}.")
    if probe is not None and probe.image is not None:
        raise ValueError("`probe` stands for the queries to come: give it without an image.")


@dataclasses.dataclass
class Item:
    """One query (or one window of it) ready for the backbone: its position in the caller's
    list, the query, the method's pass, the preprocessed pixels and their metadata."""

    index: int
    query: Query
    pass_: Pass
    pixels: torch.Tensor  # (3, h, w) float32 in [0, 1]
    meta: dict[str, Any]
    box: tuple[int, int, int, int] | None = None  # a window's (y0, y1, x0, x1) on its query's input
