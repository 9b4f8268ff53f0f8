"""``diffuseg inspect IMAGE --point y,x [--method diffcut|diffseg] --out PATH``.

Writes what a method "sees" from one pixel, next to the image: DiffCut's feature similarity
or DiffSeg's aggregated self-attention. The pictures are `diffuseg.inspection`'s (the demo's
pixel view draws the same); this module holds the flags, the checks and the printing.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from PIL import Image

from ..inspection import METHODS, view_picture
from . import COMMANDS

__all__ = ["register", "run", "parse_point", "check_out_path"]

logger = logging.getLogger(__name__)


#: What argparse takes for a negative number rather than an option: its own patterns (-1, -.5)
#: and a negative "y,x" point (-1,5), so ``--point -1,5`` reaches the point check.
_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+\s*,\s*-?\d+$")


def _point_ints(text: str) -> tuple[int, int]:
    """``"y,x"`` -> (y, x), any sign.

    Raises:
        ValueError: naming --point, if `text` is not two comma-separated integers.
    """
    parts = text.replace(" ", "").split(",")
    try:
        y, x = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--point must be 'y,x' with two integers, got {text!r}.") from None
    return y, x


def parse_point(text: str, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Parse ``"y,x"`` into two ints: a pixel of an image of `size` (height, width) when given,
    else two non-negative ints.

    Raises:
        ValueError: naming --point: not two integers, or not a pixel of the image.
    """
    y, x = _point_ints(text)
    if size is not None:
        height, width = size
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(
                f"--point {y},{x} (y,x) lies outside the image, which is {height} pixels high and {width} wide: "
                f"y must be in 0..{height - 1} and x in 0..{width - 1}."
            )
    elif y < 0 or x < 0:
        raise ValueError(f"--point must be non-negative, got {text!r}.")
    return y, x


def register(subparsers: Any) -> None:
    from ._method_options import add_method_options
    from ._options import add_model_options

    p = subparsers.add_parser(
        "inspect",
        help=COMMANDS["inspect"],
        description="Write IMAGE's model view next to the DiffCut feature-similarity map or the DiffSeg "
        "aggregated self-attention map of the pixel at --point.",
    )
    p._negative_number_matcher = _NEGATIVE  # argparse's own pattern takes "-1,5" for an option
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--point", required=True, help="query pixel 'y,x' in IMAGE's own pixel coordinates")
    p.add_argument("--method", default="diffcut", choices=METHODS, help="whose view (default diffcut)")
    p.add_argument("--out", required=True, help="output image path; its extension names the format (.png, .jpg...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_model_options(p)
    p.set_defaults(func=run, _owners=add_method_options(p))


def check_out_path(out: str, overwrite: bool) -> str:
    """The PIL format named by `out`'s extension, after checking the file can be written.

    Raises:
        ValueError: unknown extension, an existing file without `overwrite`, a folder, or a
            parent folder that cannot be created or written.
    """
    import os
    from pathlib import Path

    path = Path(out)
    formats = Image.registered_extensions()
    fmt = formats.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"`out` {out!r} must end in an image extension PIL can write, e.g. .png, .jpg, .webp.")
    if path.is_dir():
        raise ValueError(f"`out` {out} is a folder; give a file name such as {path / 'view.png'}.")
    if path.exists() and not overwrite:
        raise ValueError(f"`out` {out} exists; pass `overwrite=True` to replace it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`out` folder {path.parent} cannot be created: {e.strerror or e}.") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"`out` folder {path.parent} is not writable.")
    return fmt


def run(args: argparse.Namespace) -> int:
    from ..imageio import ImageLoadError, load_image
    from ..methods import get_method
    from ..outputs import OutputExistsError, atomic_write
    from ..plan import Query
    from ..segmenter import Segmenter
    from ._method_options import method_overrides
    from ._options import check_runtime, fail, flag_message, load_backbone, make_generator

    try:
        _point_ints(args.point)  # its syntax before anything is read; the image bounds it below
        spec = get_method(args.method)
        overrides = method_overrides(args, spec.name, args._owners)
        spec.make_config(None, **overrides)
        check_runtime(args)
        fmt = check_out_path(args.out, args.overwrite)
        image = load_image(args.image)
        y, x = parse_point(args.point, (image.height, image.width))
    except (ValueError, ImageLoadError) as e:
        return fail("inspect", flag_message(e))
    try:
        backbone = load_backbone(args)
        segmenter = Segmenter(backbone, spec, **overrides)
        features = segmenter.features(Query(image=image), generator=make_generator(args.seed, args.device))
    except (OSError, ValueError) as e:
        return fail("inspect", flag_message(e))
    try:
        picture = view_picture(image, features, spec.name, (y, x))
    except ValueError as e:
        return fail("inspect", str(e))
    import io

    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format=fmt)
    try:
        path = atomic_write(args.out, buf.getvalue(), overwrite=args.overwrite)
    except OutputExistsError as e:
        return fail("inspect", str(e))
    print(f"wrote {path} ({spec.name} view of pixel {y},{x})", file=sys.stderr)
    return 0
