"""What ``diffuseg batch`` segments: INPUT resolved to items, and each item decoded to an image.

INPUT is one of:

* a folder: the image files directly inside it (by extension, sorted by name);
* a glob (``photos/**/*.jpg``; ``**`` recurses), sorted;
* a text file of paths, one per line (blank lines and ``#`` comments skipped; relative paths are
  relative to the list's folder);
* one image file;
* a dataset: ``dataset:NAME`` (a name of `diffuseg.datasets.dataset_names()` with `root`,
  or ``dataset:synthetic``, the package's generated scenes).

Each item gets an output name (files: the stem, ``stem-2`` for a second file with that stem,
as ``diffuseg segment``; datasets: the sample id) that is also its id for seeding.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Item", "IMAGE_EXTENSIONS", "DATASET_PREFIX", "resolve_inputs", "file_items", "output_names", "decode"]

#: File extensions a folder or glob INPUT picks up (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
#: INPUT prefix naming a dataset.
DATASET_PREFIX = "dataset:"
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclasses.dataclass(frozen=True)
class Item:
    """One image to segment.

    Attributes:
        index: position in the resolved INPUT (0-based).
        name: output stem (``NAME.labels.png`` ...), unique in the run; also the seeding id.
        source: the file path, or ``dataset:NAME/SPLIT#INDEX``.
        dataset: (name, root, split) for dataset items, else None.
    """

    index: int
    name: str
    source: str
    dataset: tuple[str, str | None, str | None] | None = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "sample"


def output_names(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, output stem) per distinct input, in order: a path given twice (the same file by
    its real path) is one input; distinct files with the same stem get ``stem``, ``stem-2``, ..."""
    seen_paths: set[str] = set()
    stems: dict[str, int] = {}
    out = []
    for p in paths:
        key = os.path.realpath(p)
        if key in seen_paths:
            continue
        seen_paths.add(key)
        stem = Path(p).stem
        stems[stem] = stems.get(stem, 0) + 1
        out.append((p, stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"))
    return out


def file_items(paths: Sequence[str]) -> list[Item]:
    """The items of image files given one by one (``diffuseg segment IMAGE...``), named by
    `output_names`."""
    return [Item(i, name, path) for i, (path, name) in enumerate(output_names(paths))]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _read_list(path: Path) -> list[str]:
    base = path.parent
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        out.append(str(p if p.is_absolute() else base / p))
    return out


def _dataset_items(name: str, root: str | None, split: str | None) -> list[Item]:
    dataset = _open_dataset(name, root, split)
    ids = getattr(dataset, "ids", None)
    split = getattr(dataset, "split", split)
    items = []
    for i in range(len(dataset)):
        sample_id = str(ids[i]) if ids is not None else f"{dataset.name}-{i:06d}"
        items.append(Item(i, _safe(sample_id), f"{DATASET_PREFIX}{name}/{split}#{i}", (name, root, split)))
    return items


def resolve_inputs(
    input: str, *, root: str | None = None, split: str | None = None, limit: int | None = None
) -> list[Item]:
    """The items of INPUT `input` (see the module docstring), the first `limit` of them if given.

    Raises:
        ValueError: naming `input`, if it does not exist or holds no images; naming `limit` if
            it is not a positive int; `root` / `split` if they are given for files.
        FileNotFoundError: a dataset root that is missing (the message shows the layout).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive int, got {limit!r}.")
    if input.startswith(DATASET_PREFIX):
        items = _dataset_items(input[len(DATASET_PREFIX) :], root, split)
        what = f"dataset {input[len(DATASET_PREFIX) :]!r}"
    else:
        if root is not None or split is not None:
            raise ValueError(f"`root` and `split` apply to a dataset INPUT ({DATASET_PREFIX}NAME), not to {input!r}.")
        path = Path(input).expanduser()
        if _GLOB_CHARS.search(input) and not path.exists():
            paths = sorted(p for p in glob.glob(os.path.expanduser(input), recursive=True) if os.path.isfile(p))
            what = f"the glob {input!r}"
        elif path.is_dir():
            paths = sorted(str(p) for p in path.iterdir() if p.is_file() and _is_image(p.name))
            what = f"the folder {input} (images: {', '.join(IMAGE_EXTENSIONS)})"
        elif path.is_file():
            paths = [str(path)] if _is_image(path.name) else _read_list(path)
            what = f"the list {input}" if len(paths) != 1 or not _is_image(path.name) else input
        else:
            raise ValueError(
                f"`input` {input!r} is not a folder, a file or a glob that matches anything; give a folder of "
                f"images, a glob, a text file of paths or {DATASET_PREFIX}NAME."
            )
        items = file_items(paths)
    if not items:
        raise ValueError(f"`input` {input!r} holds no images: {what} is empty.")
    return items[:limit] if limit is not None else items


@functools.lru_cache(maxsize=4)
def _open_dataset(name: str, root: str | None, split: str | None) -> Any:
    from ..datasets import load_dataset

    return load_dataset(name, root, split)


def decode(item: Item, max_pixels: int | None = None) -> Any:
    """The RGB PIL image of `item` (fully decoded), refused from its header if it has more than
    `max_pixels` pixels (None: no limit).

    Raises:
        ImageLoadError / OSError: an unreadable file or sample, or one above `max_pixels`.
    """
    from ..imageio import check_pixels, load_image

    if item.dataset is not None:
        image = _open_dataset(*item.dataset)[item.index].image
        check_pixels(image.size, max_pixels, item.source)
        image.load()
        return image
    return load_image(item.source, max_pixels)
