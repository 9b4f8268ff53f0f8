"""A PNG of a training run's curves (loss per step, validation mIoU), drawn with Pillow only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["write_curves"]


def _panel(
    values: list[tuple[int, float]], title: str, size: tuple[int, int], colour: tuple[int, int, int]
) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((6, 4), title, fill="black")
    if not values:
        return img
    steps = np.array([s for s, _ in values], dtype=float)
    ys = np.array([v for _, v in values], dtype=float)
    if len(ys) > 200:  # a running mean keeps noisy losses readable
        k = max(1, len(ys) // 100)
        ys = np.convolve(ys, np.ones(k) / k, mode="same")
    lo, hi = float(ys.min()), float(ys.max())
    hi = hi if hi > lo else lo + 1.0
    x0, y0, x1, y1 = 40, 20, w - 10, h - 20
    d.rectangle((x0, y0, x1, y1), outline=(180, 180, 180))
    span = max(steps.max() - steps.min(), 1.0)
    xs = x0 + (steps - steps.min()) / span * (x1 - x0)
    heights = y1 - (ys - lo) / (hi - lo) * (y1 - y0)
    pts = list(zip(xs.tolist(), heights.tolist(), strict=True))
    if len(pts) == 1:
        d.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=colour)
    else:
        d.line(pts, fill=colour, width=2)
    d.text((2, y0), f"{hi:.3g}", fill="black")
    d.text((2, y1 - 10), f"{lo:.3g}", fill="black")
    d.text((x0, y1 + 4), f"step {int(steps.min())}", fill="black")
    d.text((x1 - 70, y1 + 4), f"step {int(steps.max())}", fill="black")
    return img


def write_curves(log: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Draw the loss and the validation mIoU of a ``log.jsonl`` side by side into `png`."""
    records = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    miou = [(r["step"], r["val_miou"]) for r in records if "val_miou" in r]
    size = (420, 240)
    canvas = Image.new("RGB", (2 * size[0], size[1]), "white")
    canvas.paste(_panel(loss, "training loss (MSE)", size, (200, 40, 40)), (0, 0))
    canvas.paste(_panel(miou, "validation mIoU", size, (40, 90, 200)), (size[0], 0))
    path = Path(png)
    canvas.save(path)
    return path
