"""Types shared across the package: `Segmentation` (every method's result and its pictures:
label map, overlay, COCO RLE, JSON) and `Sample` (one labelled image of a dataset). The files
a result is written to belong to `diffuseg.outputs`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .sample import Sample

__all__ = ["Segmentation", "Sample", "palette", "LABELS_8BIT", "LABELS_16BIT"]

logger = logging.getLogger(__name__)

#: Labels an 8-bit palette label PNG holds (ids 0-255); more are written as 16-bit greyscale.
LABELS_8BIT = 256
#: Labels a 16-bit label PNG holds (ids 0-65535).
LABELS_16BIT = 65536


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: a distinct, stable colour per label id.

    Returns:
        uint8 array of shape (num_colors, 3) (a new array; the map is computed once per size).
    """
    return _palette(max(num_colors, 256))[:num_colors].copy()  # colour i does not depend on the size


@functools.lru_cache(maxsize=4)
def _palette(num_colors: int) -> np.ndarray:
    cmap = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _legend_font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font, scaled with the image where Pillow can (>= 10.1)."""
    size = max(10, min(height // 40, 32))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend_text(name: Any) -> str:
    """A name as the legend shows it: accents dropped ("crème" -> "creme"), since Pillow's
    default font has ASCII glyphs only."""
    decomposed = unicodedata.normalize("NFKD", str(name))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _latin1(text: str) -> str:
    """`text` with characters outside latin-1 replaced by '?' (the bitmap font's limit)."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any) -> None:
    try:
        draw.text(xy, text, fill=(0, 0, 0), font=font)
    except UnicodeEncodeError:  # the bitmap font takes latin-1 only
        draw.text(xy, _latin1(text), fill=(0, 0, 0), font=font)


def _with_legend(overlay: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """`overlay` at (0, 0) with a white legend panel on its right: one row per (name, RGB
    colour) with a solid swatch of that colour, in columns of at most the image height (four
    columns at most; the panel grows below the image beyond that)."""
    w, h = overlay.size
    font = _legend_font(h)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_box(text: str) -> tuple[int, int]:
        try:
            _, _, right, bottom = probe.textbbox((0, 0), text, font=font)
        except UnicodeEncodeError:
            _, _, right, bottom = probe.textbbox((0, 0), _latin1(text), font=font)
        return right, bottom

    texts = [_legend_text(name) for name, _ in entries]
    boxes = [text_box(text) for text in texts]
    swatch = max(8, max(b[1] for b in boxes))
    pad = max(2, swatch // 3)
    row = swatch + pad
    per_col = max(1, (h - pad) // row)
    n_cols = min(4, -(-len(entries) // per_col))
    per_col = -(-len(entries) // n_cols)
    col_w = pad + swatch + pad + max(b[0] for b in boxes) + pad
    panel_h = max(h, pad + per_col * row)
    canvas = Image.new("RGB", (w + n_cols * col_w, panel_h), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, ((_, colour), text) in enumerate(zip(entries, texts, strict=True)):
        x = w + (i // per_col) * col_w + pad
        y = pad + (i % per_col) * row
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=colour)
        _draw_text(draw, (x + swatch + pad, y), text, font)
    return canvas


def _config_dict(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


@dataclass
class Segmentation:
    """A label image and what produced it.

    Attributes:
        labels: int64 tensor of shape (H, W) with values in [0, K); K = `num_segments`.
        method: registry name of the method that produced it.
        config: the method's config (a frozen dataclass) or a plain dict.
        names: optional name per label id (open-vocabulary methods, or after labelling).
        scores: optional float tensor of shape (K,) with a confidence per label id.
        extras: method-specific tensors (debug maps, probabilities) for inspection.
        meta: JSON-serialisable facts about the input (original size, crop box, timestep...),
            written by the `Segmenter` (`diffuseg.segmenter`), the one place that composes it.
        timings: seconds spent on this result (``model``: its share of the model call,
            ``segment``: the method's own work); not part of the JSON, so outputs are
            byte-identical across runs.
    """

    labels: torch.Tensor
    method: str = ""
    config: Any = None
    names: list[str] | None = None
    scores: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, torch.Tensor) or self.labels.ndim != 2:
            raise ValueError(
                f"`labels` must be a 2-D tensor (H, W), got "
                f"{type(self.labels).__name__} of shape {getattr(self.labels, 'shape', None)}."
            )
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.long()
        if self.labels.numel() and int(self.labels.min()) < 0:
            raise ValueError("`labels` must be non-negative label ids.")
        if self.names is not None and len(self.names) < self.num_segments:
            raise ValueError(f"`names` has {len(self.names)} entries but labels go up to {self.num_segments - 1}.")

    @property
    def num_segments(self) -> int:
        """K: one more than the largest label id (0 for an empty label map)."""
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the label image."""
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def label_ids(self) -> list[int]:
        """The label ids that actually occur, ascending."""
        if not self.labels.numel():
            return []
        return torch.bincount(self.labels.flatten()).nonzero().flatten().tolist()

    def to_input_frame(self, fill: int = 255) -> torch.Tensor:
        """Labels mapped back onto the image as it was given (before crop and resize).

        Uses `meta["input_size"]` [H, W] and `meta["crop_box"]` [left, top, right, bottom]
        (set by `Segmenter`); labels are resized with nearest neighbour into the crop box and
        pixels outside it get `fill`.

        Returns:
            int64 tensor (H, W).

        Raises:
            ValueError: if the meta data needed is missing.
        """
        if "input_size" not in self.meta or "crop_box" not in self.meta:
            raise ValueError("this segmentation has no `input_size`/`crop_box` meta data.")
        h, w = self.meta["input_size"]
        left, top, right, bottom = self.meta["crop_box"]
        inner = torch.nn.functional.interpolate(
            self.labels[None, None].float(), size=(bottom - top, right - left), mode="nearest"
        )[0, 0].long()
        out = torch.full((h, w), fill, dtype=torch.int64, device=self.labels.device)
        out[top:bottom, left:right] = inner
        return out

    def in_input_frame(self) -> Segmentation:
        """This segmentation with its labels on the image as it was given (nearest resize).

        Needs a crop box covering the whole image (the default "keep_aspect"/"squash" framing);
        `meta["frame"]` becomes "input".

        Raises:
            ValueError: if the meta data is missing or the model saw only a crop of the image.
        """
        labels = self.to_input_frame()  # checks the meta data
        h, w = self.meta["input_size"]
        if list(self.meta["crop_box"]) != [0, 0, w, h]:
            raise ValueError(
                f"the model saw only the crop {self.meta['crop_box']} of the {w}x{h} image; "
                "use `to_input_frame(fill)` to place its labels."
            )
        meta = {**self.meta, "frame": "input"}
        return dataclasses.replace(self, labels=labels, meta=meta, extras=dict(self.extras))

    # ------------------------------------------------------------------ conversions
    @property
    def label_bits(self) -> int:
        """Bits per pixel of `to_label_image`: 8 (a palette PNG) while the label ids fit a byte
        (up to `LABELS_8BIT` labels), else 16 (a greyscale PNG, up to `LABELS_16BIT` labels)."""
        return 8 if self.num_segments <= LABELS_8BIT else 16

    def to_numpy(self) -> np.ndarray:
        """The label map as an int64 array (H, W), on the host."""
        return self.labels.cpu().numpy().astype(np.int64, copy=False)

    def to_label_image(self) -> Image.Image:
        """A PNG-ready image whose pixel values are the label ids.

        Up to `LABELS_8BIT` labels: an 8-bit palette ("P" mode) image, coloured like the overlay's
        palette (`palette`). More: a 16-bit greyscale ("I;16") image (`label_bits` says which;
        ``np.asarray(Image.open(path))`` reads both as the label ids).

        Raises:
            ValueError: if there are more than `LABELS_16BIT` labels (use `to_numpy` instead).
        """
        if self.num_segments > LABELS_16BIT:
            raise ValueError(
                f"{self.num_segments} labels do not fit a 16-bit PNG (at most {LABELS_16BIT}); use `to_numpy`."
            )
        lab = self.to_numpy()
        if self.label_bits == 8:
            img = Image.fromarray(lab.astype(np.uint8), mode="P")
            img.putpalette(palette(256).reshape(-1).tolist())
            return img
        return Image.fromarray(lab.astype(np.uint16))

    def to_overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """Blend label colours over `image` (resized to the label size if needed).

        When `names` is set, a legend panel is added to the right of the overlay (which stays
        unchanged at the left, at (0, 0)): per label that occurs, a swatch in its colour and its
        name, drawn with Pillow's default font (ASCII glyphs only: accents are dropped, other
        scripts such as CJK show as boxes).
        The panel is at least as tall as the image and grows below it when the labels need more.

        Args:
            image: RGB image, PIL or uint8 array (H, W, 3).
            alpha: weight of the label colours in [0, 1] (1: the labels' colours alone).
            legend: add the legend panel when there are names (False: the overlay alone, in
                the label map's frame).

        Returns:
            RGB image of size (W, H) without names; (W + panel width, max(H, panel height)) with.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB")
        h, w = self.size
        if image.size != (w, h):
            image = image.resize((w, h), Image.BILINEAR)
        colours = self.colours()
        lab = self.labels.cpu().numpy()
        col = np.take(colours, lab, axis=0, mode="wrap")  # (H, W, 3) uint8; take is ~5x faster than indexing
        if alpha < 1.0:
            col = ((1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * col).clip(0, 255).astype(np.uint8)
        overlay = Image.fromarray(col)
        if self.names is None or not self.labels.numel() or not legend:
            return overlay
        return _with_legend(overlay, [(name, rgb) for _, name, rgb in self.legend()])

    def colours(self) -> np.ndarray:
        """The overlay colour of each label id: uint8 (max(K, 1), 3), the `palette` without its
        black first entry, so label 0 stays visible."""
        return palette(max(self.num_segments, 1) + 1)[1:]

    def legend(self) -> list[tuple[int, str | None, tuple[int, int, int]]]:
        """(label id, name or None, overlay RGB) per label that occurs, ascending."""
        colours = self.colours()
        return [
            (k, self.names[k] if self.names is not None else None, tuple(int(v) for v in colours[k]))
            for k in self.label_ids()
        ]

    def to_coco_rle(self) -> list[dict[str, Any]]:
        """One COCO RLE annotation per occurring label (pycocotools encoding).

        Returns:
            A list of dicts with `id`, `name` (or None), `area`, `bbox` [x, y, w, h] and
            `segmentation` {"size": [H, W], "counts": str}.
        """
        from pycocotools import mask as mask_utils

        lab = self.labels.cpu().numpy()
        out = []
        for k in self.label_ids():
            m = np.asfortranarray((lab == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            out.append(
                {
                    "id": k,
                    "name": self.names[k] if self.names is not None else None,
                    "score": float(self.scores[k]) if self.scores is not None else None,
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "segmentation": rle,
                }
            )
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: method, config, size, segments as COCO RLE, meta."""
        return {
            "method": self.method,
            "config": _config_dict(self.config),
            "height": self.size[0],
            "width": self.size[1],
            "num_segments": len(self.label_ids()),
            "label_bits": self.label_bits,
            "names": self.names,
            "segments": self.to_coco_rle(),
            "meta": self.meta,
        }

    def save(
        self,
        out_dir: str | os.PathLike,
        name: str,
        image: Image.Image | np.ndarray | None = None,
        *,
        overwrite: bool = False,
        sync: bool = True,
    ) -> list[Path]:
        """Write `NAME.labels.png`, `NAME.overlay.png` (if `image`) and `NAME.json` atomically
        (`diffuseg.outputs.write_outputs`: nothing is replaced unless `overwrite`; `sync` as in
        `diffuseg.outputs.atomic_write`).

        Returns:
            The paths written.
        """
        from .outputs import write_outputs

        return write_outputs(self, out_dir, name, image, overwrite=overwrite, sync=sync)
