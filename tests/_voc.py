"""Tiny PASCAL VOC folders for the eval tests: `write_voc` lays images and labels out as
VOCdevkit/VOC2012 does, `blocks_voc` fills one with coloured blocks labelled by their class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_voc(root: Path, images: list[np.ndarray], labels: list[np.ndarray]) -> Path:
    """RGB uint8 (H, W, 3) images and uint8 (H, W) labels as ``root/VOCdevkit`` (split "val",
    ids img000, img001, ...); returns the VOCdevkit folder."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:03d}" for i in range(len(images))]
    for i, img, lab in zip(ids, images, labels, strict=True):
        Image.fromarray(img).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        Image.fromarray(lab.astype(np.uint8), mode="L").save(base / "SegmentationClass" / f"{i}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def blocks_voc(root: Path, n: int, boundary_row: bool = False) -> Path:
    """`n` 48x64 images of three coloured 16x16 blocks on grey, labelled with the blocks'
    classes (1-20; background 0; the top row 255, VOC's boundary, when `boundary_row`)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((48, 64), np.uint8)
        img = np.full((48, 64, 3), 30, np.uint8)
        for _ in range(3):
            c = int(rng.integers(1, 21))
            y, x = int(rng.integers(0, 32)), int(rng.integers(0, 48))
            lab[y : y + 16, x : x + 16] = c
            img[y : y + 16, x : x + 16] = rng.integers(60, 255, 3)
        if boundary_row:
            lab[0, :] = 255
        images.append(img)
        labels.append(lab)
    return write_voc(root, images, labels)
