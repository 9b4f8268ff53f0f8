"""The benchmark datasets, read from local folders in their official download layouts.

Nothing is downloaded. ``root`` is the folder the official archive unpacks to (e.g.
``VOCdevkit`` for PASCAL VOC); a wrong root raises `FileNotFoundError` naming the layout
expected, an unknown split `ValueError`, an empty split `ValueError`.

| name | classes | label mapping | default split |
|---|---|---|---|
| cocostuff27 | 27 | stuffthingmaps 0..181 -> coarse (package data) | curated (2,175) |
| cocostuff171 | 171 | the 171 used fine ids -> 0..170 | curated |
| cocoobject81 | 81 | background 0 (all stuff), 80 things -> 1..80 | curated |
| cityscapes27 | 27 | labelIds 7..33 -> 0..26, others ignore | val (500) |
| cityscapes19 | 19 | labelIds -> trainIds 0..18, others ignore | val |
| voc21 | 21 | 0 background, 1..20, 255 ignore | val (1,449) |
| voc20 | 20 | 0 background -> ignore, 1..20 -> 0..19 (the OVSS papers' VOC20) | val |
| context60 | 60 | 0 background, 1..59 (mmseg PNGs) | val (5,104) |
| context59 | 59 | 0 -> ignore, 1..59 -> 0..58 | val |
| ade150 | 150 | 0 -> ignore, 1..150 -> 0..149 | validation (2,000) |
| potsdam | 3 | {0,4}->0, {1,5}->1, {2,3}->2 (IIC/STEGO) | test |

``synthetic`` (not a benchmark) gives the package's generated scenes with exact labels and
needs no root: the proving ground of ``diffuseg.synthetic``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, SegmentationDataset
from .classes import _data_json, class_info
from .folder import (
    FolderDataset,
    _check_split,
    _list_file,
    _lut,
    _nonempty,
    _require,
)

__all__ = ["DATASETS", "load_dataset", "dataset_names"]

logger = logging.getLogger(__name__)

_COCO_LAYOUT = """  ROOT/images/val2017/000000000139.jpg            (val2017.zip)
  ROOT/annotations/val2017/000000000139.png       (stuffthingmaps_trainval2017.zip)"""
_CITY_LAYOUT = """  ROOT/leftImg8bit/val/CITY/NAME_leftImg8bit.png   (leftImg8bit_trainvaltest.zip)
  ROOT/gtFine/val/CITY/NAME_gtFine_labelIds.png      (gtFine_trainvaltest.zip)"""
_VOC_LAYOUT = """  ROOT = VOCdevkit
  ROOT/VOC2012/JPEGImages/<id>.jpg
  ROOT/VOC2012/SegmentationClass/<id>.png
  ROOT/VOC2012/ImageSets/Segmentation/<split>.txt"""
_CTX_LAYOUT = """  ROOT = VOCdevkit
  ROOT/VOC2010/JPEGImages/<id>.jpg
  ROOT/VOC2010/SegmentationClassContext/<id>.png   (made by mmsegmentation's
                                                   tools/dataset_converters/pascal_context.py)
  ROOT/VOC2010/ImageSets/SegmentationContext/<split>.txt"""
_ADE_LAYOUT = """  ROOT = ADEChallengeData2016
  ROOT/images/<split>/ADE_val_00000001.jpg
  ROOT/annotations/<split>/ADE_val_00000001.png"""
_POTSDAM_LAYOUT = """  ROOT = potsdam (the IIC/STEGO release)
  ROOT/imgs/<id>.mat   (key "img", H x W x 4, RGB + IR)
  ROOT/gt/<id>.mat     (key "gt", H x W, 0..5)
  ROOT/labelled_test.txt, ROOT/labelled_train.txt"""


# --------------------------------------------------------------------------- COCO
def _coco(
    root: Path,
    split: str,
    name: str,
    mapping: dict[int, int],
    names: list[str],
    background: int | None = None,
) -> FolderDataset:
    _check_split(name, split, ("curated", "val2017"))
    img_dir, ann_dir = root / "images" / "val2017", root / "annotations" / "val2017"
    _require(root, name, _COCO_LAYOUT, img_dir, ann_dir)
    if split == "curated":  # the IIC/PiCIE/STEGO/DiffSeg list (package data)
        ref = "diffuseg/data/cocostuff27/curated_val2017_ids.txt"
        from importlib import resources

        text = resources.files("diffuseg").joinpath("data", "cocostuff27", "curated_val2017_ids.txt")
        ids = [s.strip() for s in text.read_text().splitlines() if s.strip()]
        logger.debug("using the curated list %s (%d ids)", ref, len(ids))
    else:
        ids = sorted(p.stem for p in img_dir.glob("*.jpg"))
    entries = [(i, img_dir / f"{i}.jpg", ann_dir / f"{i}.png") for i in ids]
    return FolderDataset(
        name,
        names,
        _nonempty(name, entries, img_dir),
        _lut(mapping),
        root,
        split,
        background_class=background,
    )


def _cocostuff27(root: Path, split: str) -> FolderDataset:
    f2c = _data_json("cocostuff27", "fine_to_coarse.json")["fine_index_to_coarse_index"]
    mapping = {int(k): int(v) for k, v in f2c.items()} | {255: IGNORE_INDEX}
    return _coco(root, split, "cocostuff27", mapping, class_info("cocostuff27")["names"])


def _cocostuff171(root: Path, split: str) -> FolderDataset:
    info = class_info("cocostuff182")
    used = [i for i in range(182) if i not in set(info["unused_thing_indices"])]
    mapping = {raw: new for new, raw in enumerate(used)} | {255: IGNORE_INDEX}
    return _coco(root, split, "cocostuff171", mapping, [info["names"][i] for i in used])


def _cocoobject81(root: Path, split: str) -> FolderDataset:
    info = class_info("cocostuff182")
    things = [i for i in range(91) if i not in set(info["unused_thing_indices"])]
    mapping = {raw: new + 1 for new, raw in enumerate(things)}
    mapping |= {raw: 0 for raw in range(91, 182)} | {255: IGNORE_INDEX}  # stuff -> background
    names = ["background"] + [info["names"][i] for i in things]
    return _coco(root, split, "cocoobject81", mapping, names, background=0)


# --------------------------------------------------------------------------- Cityscapes
def _cityscapes(root: Path, split: str, name: str) -> FolderDataset:
    _check_split(name, split, ("train", "val"))
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    _require(root, name, _CITY_LAYOUT, img_dir, gt_dir)
    entries = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        entries.append((stem, img, gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"))
    info = class_info(name)
    # labelIds 0..33 exist (license plate, id -1, is stored as 255 by some tools): others ignore
    mapping = {raw: IGNORE_INDEX for raw in range(34)} | {255: IGNORE_INDEX}
    mapping |= {raw: new for new, raw in enumerate(info["label_ids"])}
    return FolderDataset(
        name,
        info["names"],
        _nonempty(name, entries, img_dir),
        _lut(mapping),
        root,
        split,
        palette=np.asarray(info["palette"], dtype=np.uint8),
    )


# --------------------------------------------------------------------------- PASCAL
def _voc(root: Path, split: str, name: str) -> FolderDataset:
    """PASCAL VOC 2012: ``voc21`` scores background (0) and the 20 objects; ``voc20`` ignores
    background and shifts the objects to 0..19 (mmseg ``reduce_zero_label``, as SCLIP's
    ``PascalVOC20Dataset``). 255 (object boundaries) is ignored in both."""
    _check_split(name, split, ("train", "val", "trainval"))
    base = root / "VOC2012"
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    _require(root, name, _VOC_LAYOUT, base / "JPEGImages", base / "SegmentationClass", list_file)
    entries = [
        (i, base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in _list_file(list_file)
    ]
    names = class_info("voc21")["names"]
    if name == "voc21":
        mapping, bg = {i: i for i in range(21)}, 0
    else:
        mapping, names, bg = {0: IGNORE_INDEX} | {i: i - 1 for i in range(1, 21)}, names[1:], None
    mapping |= {255: IGNORE_INDEX}  # 255 = object boundaries
    return FolderDataset(
        name,
        names,
        _nonempty(name, entries, list_file),
        _lut(mapping),
        root,
        split,
        background_class=bg,
    )


def _context(root: Path, split: str, name: str) -> FolderDataset:
    _check_split(name, split, ("train", "val"))
    base = root / "VOC2010"
    list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    _require(root, name, _CTX_LAYOUT, base / "JPEGImages", base / "SegmentationClassContext", list_file)
    entries = [
        (i, base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClassContext" / f"{i}.png")
        for i in _list_file(list_file)
    ]
    names59 = class_info("context59")["names"]
    if name == "context60":
        mapping, names, bg = {i: i for i in range(60)}, ["background", *names59], 0
    else:  # reduce_zero_label: background is not scored
        mapping, names, bg = {0: IGNORE_INDEX} | {i: i - 1 for i in range(1, 60)}, names59, None
    mapping |= {255: IGNORE_INDEX}
    return FolderDataset(
        name,
        names,
        _nonempty(name, entries, list_file),
        _lut(mapping),
        root,
        split,
        background_class=bg,
    )


# --------------------------------------------------------------------------- ADE20K
def _ade150(root: Path, split: str) -> FolderDataset:
    _check_split("ade150", split, ("training", "validation"))
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    _require(root, "ade150", _ADE_LAYOUT, img_dir, ann_dir)
    entries = [(p.stem, p, ann_dir / f"{p.stem}.png") for p in sorted(img_dir.glob("*.jpg"))]
    mapping = {0: IGNORE_INDEX} | {i: i - 1 for i in range(1, 151)}  # 0 = "other", not scored
    return FolderDataset(
        "ade150",
        class_info("ade150")["names"],
        _nonempty("ade150", entries, img_dir),
        _lut(mapping),
        root,
        split,
    )


# --------------------------------------------------------------------------- Potsdam
def _read_mat(key: str) -> Callable[[Path], np.ndarray]:
    def read(path: Path) -> np.ndarray:
        from scipy.io import loadmat

        try:
            return np.asarray(loadmat(path)[key])
        except (ValueError, TypeError) as e:  # scipy raises these on corrupt files
            raise OSError(f"not a MATLAB file with key {key!r}: {e}") from e

    return read


def _read_potsdam_image(path: Path):  # -> PIL.Image.Image
    from PIL import Image

    arr = _read_mat("img")(path)[..., :3]  # (H, W, 3): drop the IR channel
    if arr.dtype.kind == "f":
        arr = arr * 255.0 if float(arr.max()) <= 1.0 else arr
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")


def _potsdam(root: Path, split: str) -> FolderDataset:
    _check_split("potsdam", split, ("test", "train"))
    list_file = root / f"labelled_{split}.txt"
    _require(root, "potsdam", _POTSDAM_LAYOUT, root / "imgs", root / "gt", list_file)
    entries = [(i, root / "imgs" / f"{i}.mat", root / "gt" / f"{i}.mat") for i in _list_file(list_file)]
    mapping = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: IGNORE_INDEX}
    return FolderDataset(
        "potsdam",
        class_info("potsdam")["names"],
        _nonempty("potsdam", entries, list_file),
        _lut(mapping),
        root,
        split,
        read_label=_read_mat("gt"),
        read_image=_read_potsdam_image,
    )


# name -> (builder(root, split), default split)
DATASETS: dict[str, tuple[Callable[[Path, str], FolderDataset], str]] = {
    "cocostuff27": (_cocostuff27, "curated"),
    "cocostuff171": (_cocostuff171, "curated"),
    "cocoobject81": (_cocoobject81, "curated"),
    "cityscapes27": (lambda r, s: _cityscapes(r, s, "cityscapes27"), "val"),
    "cityscapes19": (lambda r, s: _cityscapes(r, s, "cityscapes19"), "val"),
    "voc21": (lambda r, s: _voc(r, s, "voc21"), "val"),
    "voc20": (lambda r, s: _voc(r, s, "voc20"), "val"),
    "context60": (lambda r, s: _context(r, s, "context60"), "val"),
    "context59": (lambda r, s: _context(r, s, "context59"), "val"),
    "ade150": (_ade150, "validation"),
    "potsdam": (_potsdam, "test"),
}


def _synthetic(split: str) -> SegmentationDataset:
    """The package's synthetic scenes (generated, no files), 200 scenes per split."""
    from ..synthetic import SyntheticScenes

    return SyntheticScenes(split=split)


def dataset_names() -> list[str]:
    """The dataset names `load_dataset` knows."""
    return list(DATASETS)


def load_dataset(name: str, root: str | os.PathLike | None, split: str | None = None) -> SegmentationDataset:
    """Open benchmark dataset `name` stored under `root`.

    Args:
        name: one of `dataset_names()`, or ``"synthetic"`` for the package's generated scenes
            (200 per split, exact labels, no files; `root` is ignored).
        root: the folder the official archive unpacks to (see each layout in the errors).
        split: the split; None = the split the papers evaluate on.

    Raises:
        ValueError: unknown name or split, or an empty split.
        FileNotFoundError: `root` or a folder of the layout is missing (the message shows the
            layout expected).
    """
    if name == "synthetic":  # the proving ground: generated, needs no root
        return _synthetic(split or "val")
    if name not in DATASETS:
        raise ValueError(f"unknown `dataset` {name!r}; choose one of {[*dataset_names(), 'synthetic']}.")
    if root is None:
        raise ValueError(f"`root` is required for dataset {name!r}.")
    builder, default = DATASETS[name]
    return builder(Path(root).expanduser(), split or default)
