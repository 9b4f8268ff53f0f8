"""``--window CROP,STRIDE``: sliding-window inference (`diffuseg.settings.SlidingWindow`) for
open-vocabulary methods; torch-free, like the rest of the parser."""

from __future__ import annotations

import argparse

from ..settings import SlidingWindow

__all__ = ["add_window_option", "parse_window"]


def parse_window(text: str) -> SlidingWindow:
    """``"CROP,STRIDE"`` (two positive ints, stride <= crop) as a `SlidingWindow`.

    Raises:
        argparse.ArgumentTypeError: naming the value and what is allowed (argparse reports it
            as ``argument --window: ...``, exit code 2).
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"give CROP,STRIDE in model-input pixels (e.g. 448,224), got {text!r}")
    try:
        return SlidingWindow(int(parts[0]), int(parts[1]))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_window_option(parser: argparse.ArgumentParser) -> None:
    """Add --window (default None: the whole model input in one pass)."""
    parser.add_argument(
        "--window",
        type=parse_window,
        default=None,
        metavar="CROP,STRIDE",
        help="sliding-window inference (open-vocabulary methods): score CROP x CROP windows of the model input, "
        "STRIDE pixels apart (the last one shifted back to the border), and average the class scores where "
        "they overlap, as mmseg's slide_inference; CROP a multiple of the model's size step (64 for Stable "
        "Diffusion 1.x/2.x: 320, 384, 448, 512). Default: the whole input in one pass",
    )
