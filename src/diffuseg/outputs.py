"""A result's output files: what they are, their bytes, and writing them atomically.

Per image, ``diffuseg segment``, ``diffuseg batch``, the eval runner's saved predictions and the
demo's downloads write the same files (`OUTPUTS`), rendered by one function (`render_outputs`)
and written through a temp file and a rename (`atomic_write`), so a reader never sees a
half-written file. `diffuseg.types.Segmentation` converts itself to pictures and JSON; this
module owns the files.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "OUTPUTS",
    "OVERLAY",
    "OutputExistsError",
    "atomic_write",
    "check_out_dir",
    "existing_outputs",
    "png_bytes",
    "render_outputs",
    "write_outputs",
]

#: The files written per image, by suffix, in writing order (the overlay only when the image is
#: given): the palette label map, the labels over the image, and the JSON (COCO RLE, settings).
#: The JSON comes last, so an image is done only when all its files exist.
OUTPUTS = (".labels.png", ".overlay.png", ".json")
#: The suffix of the overlay, the one output that needs the image.
OVERLAY = ".overlay.png"


class OutputExistsError(FileExistsError):
    """An output file exists and replacing it was not asked for."""


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual 0644
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def png_bytes(image: Any) -> bytes:
    """The PNG file of a PIL image, as bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_outputs(seg: Any, image: Any = None) -> list[tuple[str, bytes]]:
    """The output files of one result, rendered: (suffix, bytes) per file of `OUTPUTS`, in order.

    Args:
        seg: a `diffuseg.types.Segmentation` (labels (H, W) int64, names, config, meta).
        image: the RGB image (PIL or uint8 (H, W, 3)) for the overlay, or None (no overlay).
    """
    files = [(".labels.png", png_bytes(seg.to_label_image()))]
    if image is not None:
        files.append((OVERLAY, png_bytes(seg.to_overlay(image))))
    files.append((".json", json.dumps(seg.to_json_dict(), indent=1).encode()))
    return files


def write_outputs(
    seg: Any,
    out_dir: str | os.PathLike,
    name: str,
    image: Any = None,
    *,
    overwrite: bool = False,
    sync: bool = True,
) -> list[Path]:
    """Write ``NAME.labels.png``, ``NAME.overlay.png`` (if `image`) and ``NAME.json`` atomically,
    the JSON last.

    Existing files are never replaced unless `overwrite`; the check happens for all files before
    any is written, so a refused save leaves nothing half-done. `sync`: see `atomic_write`
    (False for short-lived files, e.g. a web page's downloads).

    Returns:
        The paths written.

    Raises:
        OutputExistsError: an output exists and `overwrite` is False.
        OSError: a file cannot be written (files written before it stay; the JSON is not written).
    """
    out_dir = Path(out_dir)
    if not overwrite:
        suffixes = [s for s in OUTPUTS if image is not None or s != OVERLAY]
        existing = [str(out_dir / f"{name}{s}") for s in suffixes if (out_dir / f"{name}{s}").exists()]
        if existing:
            raise OutputExistsError(f"output exists: {', '.join(existing)}; pass `overwrite=True` to replace.")
    files = render_outputs(seg, image)
    return [atomic_write(out_dir / f"{name}{s}", blob, overwrite=overwrite, sync=sync) for s, blob in files]


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder `out` if needed and make sure files can be written there.

    Returns:
        `out` as a `Path`.

    Raises:
        ValueError: naming `out`, if it is a file, cannot be created, or is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out` {out} is a file, not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"`out` {out} cannot be written: {e.strerror or e}.") from None
    return out


def existing_outputs(out_dir: str | os.PathLike, name: str) -> list[Path]:
    """The files of `OUTPUTS` that image `name` already has in `out_dir`."""
    return [p for p in (Path(out_dir) / f"{name}{s}" for s in OUTPUTS) if p.exists()]
