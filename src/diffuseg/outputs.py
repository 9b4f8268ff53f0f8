"""A result's output files: what they are, their bytes, and writing them atomically.

Per image, ``diffuseg segment``, ``diffuseg batch``, the eval runner's saved predictions and the
demo's downloads write the same files (`OUTPUTS` by default; `SUFFIXES` lists every kind),
rendered by one function (`render_outputs`) and written by one (`write_outputs`): each file
through a temp file and a rename, all of an image's files or none, the JSON last, so a reader
never sees a half-written file and a failed save leaves nothing behind.
`diffuseg.types.Segmentation` converts itself to pictures and JSON; this module owns the files.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OUTPUTS",
    "OVERLAY",
    "SUFFIXES",
    "DEFAULT_SAVE",
    "SAVE_KINDS",
    "OutputExistsError",
    "atomic_write",
    "check_out_dir",
    "check_save",
    "existing_outputs",
    "folder_problem",
    "output_suffixes",
    "png_bytes",
    "render_outputs",
    "write_outputs",
]

#: Each kind of output file an image can get -> its suffix (``NAME.labels.png`` ...), in writing
#: order: the label map as a PNG (8-bit palette, or 16-bit greyscale above 256 labels), the
#: labels over the image, the label map as a NumPy array, a folder of one binary mask per
#: segment, and the JSON (COCO RLE, settings). The JSON comes last, so an image is done only when
#: all its files exist.
SUFFIXES = {
    "labels": ".labels.png",
    "overlay": ".overlay.png",
    "npy": ".labels.npy",
    "masks": ".masks",
    "json": ".json",
}
#: The kinds written unless asked otherwise.
DEFAULT_SAVE = ("labels", "overlay", "json")
#: The kinds a caller may choose (the JSON is always written: it marks an image done).
SAVE_KINDS = tuple(k for k in SUFFIXES if k != "json")
#: The files written per image by default, by suffix, in writing order (the overlay only when the
#: image is given).
OUTPUTS = tuple(SUFFIXES[k] for k in DEFAULT_SAVE)
#: The suffix of the overlay, the one output that needs the image.
OVERLAY = SUFFIXES["overlay"]
#: Longest file name most file systems take (bytes); `write_outputs` names the image when an
#: output name is longer.
_NAME_MAX = 255


class OutputExistsError(FileExistsError):
    """An output file exists and replacing it was not asked for."""


def check_save(save: Sequence[str]) -> tuple[str, ...]:
    """`save` as the tuple of kinds to write, in `SUFFIXES` order, with the JSON.

    Raises:
        ValueError: naming `save`, if it is empty or names a kind not in `SAVE_KINDS`.
    """
    if isinstance(save, str) or not all(isinstance(k, str) for k in save):
        raise ValueError(f"`save` must be a sequence of kinds from {SAVE_KINDS}, got {save!r}.")
    unknown = [k for k in save if k not in SUFFIXES]
    if unknown:
        raise ValueError(f"`save` has {', '.join(map(repr, unknown))}; choose from {', '.join(SAVE_KINDS)}.")
    return tuple(k for k in SUFFIXES if k in save or k == "json")


def output_suffixes(save: Sequence[str] = DEFAULT_SAVE, *, image: bool = True) -> tuple[str, ...]:
    """The suffixes of the files `save` writes per image (no overlay without the `image`)."""
    return tuple(SUFFIXES[k] for k in check_save(save) if image or k != "overlay")


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_temp(folder: Path, name: str, data: bytes, sync: bool) -> str:
    """`data` in a new temp file of `folder` (mode 0644 under the usual umask); its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual 0644
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _write_temp_folder(folder: Path, name: str, files: Mapping[str, bytes], sync: bool) -> str:
    """A new temp folder of `folder` holding `files` (name -> bytes); its path."""
    tmp = tempfile.mkdtemp(prefix=f".{name[:64]}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for file_name, data in files.items():
            os.replace(_write_temp(Path(tmp), file_name, data, sync), os.path.join(tmp, file_name))
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str | os.PathLike) -> None:
    """Delete a file or folder if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _put(tmp: str, path: Path) -> None:
    """Move a finished temp file or folder onto `path` (a folder replaces the old one)."""
    if os.path.isdir(tmp) and os.path.lexists(path):
        old = f"{tmp}.old"
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, data: bytes, *, overwrite: bool = False, sync: bool = True) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename.

    A reader never sees a half-written file, and an existing file is kept unless `overwrite`.
    With `sync` the data reaches the disk before the rename (a crash leaves the old file or the
    whole new one); without, only other readers are protected (for short-lived files).

    Returns:
        `path` as a `Path`.

    Raises:
        OutputExistsError: if `path` exists and `overwrite` is False.
        OSError: the folder cannot be written (no temp file is left behind).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass `overwrite=True` to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path.parent, path.name, data, sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def png_bytes(image: Any) -> bytes:
    """The PNG file of a PIL image, as bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _npy_bytes(labels: np.ndarray) -> bytes:
    """The ``.npy`` file of a label map, in the smallest unsigned type that holds its ids."""
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32
    buf = io.BytesIO()
    np.save(buf, labels.astype(dtype), allow_pickle=False)
    return buf.getvalue()


def _mask_files(seg: Any) -> dict[str, bytes]:
    """One binary PNG (0 / 255, greyscale) per occurring label: ``ID.png``, or ``ID-NAME.png``
    with the segment's name (characters other than letters, digits, ``._-`` become ``_``)."""
    from PIL import Image

    labels = seg.to_numpy()
    files = {}
    for k in seg.label_ids():
        name = seg.names[k] if seg.names is not None and seg.names[k] else None
        stem = f"{k:03d}" if name is None else f"{k:03d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:100]}"
        files[f"{stem}.png"] = png_bytes(Image.fromarray(((labels == k) * 255).astype(np.uint8), mode="L"))
    return files


def render_outputs(seg: Any, image: Any = None, save: Sequence[str] = DEFAULT_SAVE) -> list[tuple[str, Any]]:
    """The output files of one result, rendered: (suffix, bytes) per file, in `SUFFIXES` order;
    the masks' entry holds {file name: bytes} (a folder).

    Args:
        seg: a `diffuseg.types.Segmentation` (labels (H, W) int64, names, config, meta).
        image: the RGB image (PIL or uint8 (H, W, 3)) for the overlay, or None (no overlay).
        save: the kinds to write (`check_save`); default `DEFAULT_SAVE`.

    Raises:
        ValueError: a label map no PNG holds (`Segmentation.to_label_image`), or a bad `save`.
    """
    render = {
        "labels": lambda: png_bytes(seg.to_label_image()),
        "overlay": lambda: png_bytes(seg.to_overlay(image)),
        "npy": lambda: _npy_bytes(seg.to_numpy()),
        "masks": lambda: _mask_files(seg),
        "json": lambda: json.dumps(seg.to_json_dict(), indent=1).encode(),
    }
    return [(SUFFIXES[k], render[k]()) for k in check_save(save) if image is not None or k != "overlay"]


def write_outputs(
    seg: Any,
    out_dir: str | os.PathLike,
    name: str,
    image: Any = None,
    *,
    overwrite: bool = False,
    sync: bool = True,
    save: Sequence[str] = DEFAULT_SAVE,
) -> list[Path]:
    """Write image `name`'s files (`render_outputs`: by default ``NAME.labels.png``,
    ``NAME.overlay.png`` if `image`, and ``NAME.json``), all or none.

    Every file is rendered, then written to a temp file (or folder) beside its place; only when
    all are written are they renamed into place, the JSON last. A failure on the way (a full
    disk, a name too long, a label map no PNG holds) leaves no new file behind, and an old
    output being replaced stays whole. Existing files are never replaced unless `overwrite`;
    the check happens for all files before any is written. `sync`: see `atomic_write` (False
    for short-lived files, e.g. a web page's downloads).

    Returns:
        The paths written.

    Raises:
        OutputExistsError: an output exists and `overwrite` is False.
        ValueError: if an output's file name (from `name`) is longer than file systems take;
            a label map no PNG holds; a bad `save`.
        OSError: a file cannot be written (nothing is left behind).
    """
    out_dir = Path(out_dir)
    suffixes = output_suffixes(save, image=image is not None)
    too_long = max(len(f"{name}{s}".encode()) for s in suffixes)
    if too_long > _NAME_MAX:
        short = name if len(name) <= 40 else f"{name[:40]}..."
        raise ValueError(
            f"the output name {short!r} is too long: its files' names would have {too_long} bytes, and file "
            f"systems take at most {_NAME_MAX}; rename the image."
        )
    if not overwrite:
        existing = [str(p) for p in existing_outputs(out_dir, name, suffixes)]
        if existing:
            raise OutputExistsError(f"output exists: {', '.join(existing)}; pass `overwrite=True` to replace.")
    files = render_outputs(seg, image, save)
    out_dir.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []
    try:
        for suffix, data in files:
            write = _write_temp_folder if isinstance(data, Mapping) else _write_temp
            temps.append(write(out_dir, f"{name}{suffix}", data, sync))
        paths = []
        for (suffix, _), tmp in zip(files, temps, strict=True):
            _put(tmp, out_dir / f"{name}{suffix}")
            paths.append(out_dir / f"{name}{suffix}")
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise
    return paths


def check_out_dir(out: str | os.PathLike, argument: str = "out") -> Path:
    """Create the output folder `out` if needed and make sure files can be written there.

    Args:
        out: the folder.
        argument: the caller's name for it, used in the error (e.g. "save_predictions").

    Returns:
        `out` as a `Path`.

    Raises:
        ValueError: naming `argument`, if `out` is empty, a file, cannot be created, or is not
            writable.
    """
    if not str(out).strip():
        raise ValueError(f"`{argument}` is empty ({str(out)!r}); name a folder (`.` for the current one).")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`{argument}` {out} is a file, not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"`{argument}` {out} cannot be written: {e.strerror or e}.") from None
    return out


def folder_problem(out: str | os.PathLike, argument: str = "out") -> str | None:
    """Why `out` cannot be (or become) a folder to write into, or None; nothing is created
    (`check_out_dir` creates it). The message names `argument`."""
    if not str(out).strip():  # Path("") is ".": the files would land in the working folder
        return f"`{argument}` must name a folder, got {str(out)!r}."
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            return f"`{argument}` {path} is a file; give a folder."
        return None if os.access(path, os.W_OK | os.X_OK) else f"`{argument}` {path} is not writable."
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        return f"`{argument}` {path} cannot be created: {parent} is a file, not a folder."
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"`{argument}` {path} cannot be created: {parent} is not writable."
    return None


def existing_outputs(out_dir: str | os.PathLike, name: str, suffixes: Sequence[str] = OUTPUTS) -> list[Path]:
    """The files of `suffixes` (default `OUTPUTS`) that image `name` already has in `out_dir`
    (a name too long for the file system has none)."""
    return [p for p in (Path(out_dir) / f"{name}{s}" for s in suffixes) if os.path.lexists(p)]
