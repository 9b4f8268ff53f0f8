"""Evaluation protocols: where the image is cropped, what size the method sees, where we score.

Published numbers differ partly because each paper crops and scores differently
(reference notes: diffseg_diffcut.md §3 and §5). A `Protocol` names those choices and every
report states the preset it used.

Presets:

``diffseg``
    Square centre crop to the short side (offsets ``(size - side) // 2``, as DiffSeg's
    ``process_image``), image resized to 512 (bilinear, no antialias, as ``tf.image.resize``),
    label to 512 (nearest, half-pixel centres as TF2); scored at 512 x 512. (The resized image
    is rounded to uint8 here; DiffSeg feeds TF's float output, a difference below 0.5/255.)
``diffcut``
    Centre crop of side ``min(H, W) - 1`` (torchvision ``center_crop`` offsets,
    ``round((size - side) / 2)``), image resized to 1024 (bilinear, no antialias), label to
    1024 (nearest-exact), then the label is nearest-downsampled to 128 x 128
    (``F.interpolate`` default) and the prediction likewise; scored at 128 x 128.
``maskdiffusion``
    MaskDiffusion's Cityscapes evaluation (``scripts/run.py``): the whole image squashed to the
    model's 512 x 512 input (by the method, ``resize_mode="squash"``), the label resized from
    full resolution to 256 x 352 with PIL NEAREST (pixel centres), the prediction likewise;
    scored at 256 x 352. (The reference resizes its score maps bilinearly to 256 x 352 and
    takes the argmax there; here the labels are resized, nearest.)
``full``
    No crop, the label at its full resolution (the default for new numbers). The method sees
    the whole image (``resize_mode="keep_aspect"``) at its own input size, and its labels are
    mapped back onto the whole image.

A protocol reaches the method only through the `diffuseg.plan.Query`: ``size`` (the model
input side it fixes), ``resize_mode``, ``label_size`` (the scoring grid) and ``window``
(sliding-window inference for open-vocabulary methods). The training-free open-vocabulary
papers' protocol (mmseg's ``slide_inference``: shorter side resized to 336, 336 x 336 windows
112 apart, scored at the label's full resolution) is
``Protocol(name, resize_mode="short_side", model_size=336, window=SlidingWindow(336, 112))``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..settings import SlidingWindow

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "prepare", "resize_nearest"]

logger = logging.getLogger(__name__)

_CROPS = ("none", "square", "square-minus-one")
_NEAREST = ("floor", "exact")


@dataclass(frozen=True)
class Protocol:
    """How images and labels are cropped and resized for one evaluation.

    Attributes:
        name: preset name written into reports.
        crop: ``"none"``, ``"square"`` (short side, DiffSeg offsets) or ``"square-minus-one"``
            (side min(H, W) - 1, torchvision offsets, DiffCut).
        input_size: side of the square image given to the method, or None to keep the size.
        label_nearest: label resize rule to `input_size`: ``"floor"`` (index i * in / out) or
            ``"exact"`` (index (i + 0.5) * in / out; PIL NEAREST, torch nearest-exact).
        score_size: side of the square grid scored, an (H, W) grid, or None to score at the
            label's size after crop and resize. Label and prediction are downsampled with the
            `score_nearest` rule.
        resize_mode: how the method fits the prepared image to its input (`Query.resize_mode`;
            the protocols' prepared images are square already for "crop").
        model_size: the model input side the method is told (`Query.size`) when the protocol
            does not resize the image itself (`input_size` None); the method fits the image with
            `resize_mode`.
        score_nearest: nearest rule of the downsampling to `score_size` ("floor" or "exact").
        window: sliding-window inference over the model input (`Query.window`: crop and stride
            in model-input pixels; open-vocabulary methods only), or None for one pass over it.
            With ``resize_mode="short_side"`` and `model_size` it is mmseg's slide protocol.
    """

    name: str
    crop: Literal["none", "square", "square-minus-one"] = "none"
    input_size: int | None = None
    label_nearest: Literal["floor", "exact"] = "floor"
    score_size: int | tuple[int, int] | None = None
    resize_mode: str = "keep_aspect"
    model_size: int | None = None
    score_nearest: Literal["floor", "exact"] = "floor"
    window: SlidingWindow | None = None

    def __post_init__(self) -> None:
        if self.window is not None and not isinstance(self.window, SlidingWindow):
            raise ValueError(f"`window` must be a SlidingWindow(crop, stride) or None, got {self.window!r}.")
        if self.crop not in _CROPS:
            raise ValueError(f"`crop` must be one of {_CROPS}, got {self.crop!r}.")
        for name in ("label_nearest", "score_nearest"):
            if getattr(self, name) not in _NEAREST:
                raise ValueError(f"`{name}` must be one of {_NEAREST}, got {getattr(self, name)!r}.")
        if isinstance(self.score_size, (tuple, list)):
            if len(self.score_size) != 2 or any(not isinstance(v, int) or v < 1 for v in self.score_size):
                raise ValueError(
                    f"`score_size` must be a positive int, an (H, W) pair or None, got {self.score_size!r}."
                )
            object.__setattr__(self, "score_size", tuple(self.score_size))
        for name in ("input_size", "model_size") + (() if isinstance(self.score_size, tuple) else ("score_size",)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {v!r}.")
        if self.input_size is not None and self.model_size is not None:
            raise ValueError("give `input_size` (the protocol resizes) or `model_size` (the method resizes), not both.")

    def record(self) -> dict[str, Any]:
        """The protocol as JSON-serialisable data (reports, result-file fingerprints); `window`
        only when set, so result files written before it existed still resume."""
        out = dataclasses.asdict(self)
        if self.window is None:
            del out["window"]
        return out

    @property
    def query_size(self) -> int | None:
        """The model input side the method is told (`Query.size`), or None."""
        return self.input_size if self.input_size is not None else self.model_size

    @property
    def label_size(self) -> int | None:
        """The longer side of the scoring grid (`Query.label_size`), or None."""
        if isinstance(self.score_size, tuple):
            return max(self.score_size)
        return self.score_size


PROTOCOLS: dict[str, Protocol] = {
    # tf.image.resize(method="nearest") samples at half-pixel centres -> "exact"
    "diffseg": Protocol("diffseg", crop="square", input_size=512, label_nearest="exact", resize_mode="crop"),
    "diffcut": Protocol(
        "diffcut",
        crop="square-minus-one",
        input_size=1024,
        label_nearest="exact",
        score_size=128,
        resize_mode="crop",
    ),
    "maskdiffusion": Protocol(
        "maskdiffusion", model_size=512, resize_mode="squash", score_size=(256, 352), score_nearest="exact"
    ),
    "full": Protocol("full", crop="none", resize_mode="keep_aspect"),
}


def get_protocol(name: str | Protocol) -> Protocol:
    """The preset called `name` (a `Protocol` passes through).

    Raises:
        ValueError: for an unknown name (the message lists the presets).
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown `protocol` {name!r}; choose one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]


def _crop_box(h: int, w: int, crop: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the protocol's crop."""
    if crop == "none":
        return 0, 0, h, w
    if crop == "square":  # DiffSeg process_image: start = (size - side) // 2
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
    else:  # DiffCut: torchvision center_crop(min - 1): start = round((size - side) / 2)
        side = max(min(h, w) - 1, 1)
        top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return top, left, top + side, left + side


def _nearest_index(n_in: int, n_out: int, rule: str) -> np.ndarray:
    if rule == "floor":  # torch F.interpolate(mode="nearest")
        idx = np.floor(np.arange(n_out) * (n_in / n_out))
    else:  # nearest-exact / PIL NEAREST: sample at pixel centres
        idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out))
    return np.minimum(idx.astype(np.int64), n_in - 1)


def resize_nearest(labels: np.ndarray, size: tuple[int, int], rule: str = "floor") -> np.ndarray:
    """Nearest-neighbour resize of a label map (H, W) to `size` (h, w), keeping the dtype."""
    h, w = labels.shape
    if (h, w) == tuple(size):
        return labels
    rows = _nearest_index(h, size[0], rule)
    cols = _nearest_index(w, size[1], rule)
    return labels[rows[:, None], cols[None, :]]


def _resize_image(image: Image.Image, side: int) -> Image.Image:
    """Bilinear resize without antialias (half-pixel centres, as TF2 and torchvision tensors)."""
    import torch  # here: the presets (``diffuseg eval --help``) load without torch

    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    out = torch.nn.functional.interpolate(
        arr[None], size=(side, side), mode="bilinear", align_corners=False, antialias=False
    )[0]  # (3, side, side) float32 in [0, 255]
    out = out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(out)


def prepare(image: Image.Image, label: np.ndarray, protocol: Protocol) -> tuple[Image.Image, np.ndarray]:
    """Crop and resize an image / label pair as `protocol` says.

    Args:
        image: RGB PIL image (W, H).
        label: integer array (H, W) of class ids and ignore values.

    Returns:
        The image for the method and the label at the protocol's input size (before any
        `score_size` downsampling, which `to_score_grid` applies to both sides).
    """
    h, w = label.shape
    top, left, bottom, right = _crop_box(h, w, protocol.crop)
    if protocol.crop != "none":
        image = image.crop((left, top, right, bottom))
        label = label[top:bottom, left:right]
    if protocol.input_size is not None:
        s = protocol.input_size
        if image.size != (s, s):
            image = _resize_image(image, s)
        label = resize_nearest(label, (s, s), protocol.label_nearest)
    return image, label


def to_score_grid(array: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Downsample a label or prediction map to the protocol's scoring grid (floor nearest)."""
    if protocol.score_size is None:
        return array
    size = protocol.score_size if isinstance(protocol.score_size, tuple) else (protocol.score_size,) * 2
    return resize_nearest(array, size, protocol.score_nearest)
