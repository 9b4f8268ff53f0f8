"""CLI helpers of the labelling stage: --filter, and the CLIP model and captioner that the
class filter and the methods share (loaded once, on --label-device)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_filter_option", "check_filter", "load_label_models", "build_filter"]


def add_filter_option(parser: Any) -> None:
    """--filter: which of the classes each image gets (`diffuseg.labeling.filters.FILTERS`)."""
    from ..labeling.filters import FILTERS

    parser.add_argument(
        "--filter",
        dest="class_filter",
        default="none",
        choices=FILTERS,
        help="keep only the classes found in each image before segmenting (default none: all of them; "
        "diffusion: the diffusion model's own cross-attention, no second model; clip: CLIP image-text "
        "similarity; caption-clip: that or the caption's CLIP text similarity); the JSON lists what was kept",
    )
    parser.add_argument(
        "--label-device",
        default=None,
        help="device of the CLIP model and the captioner of the labelling stage (default: --device)",
    )


def check_filter(args: argparse.Namespace, spec: Any) -> Any:
    """The class filter the user chose, or None; refused for methods without class names.

    Raises:
        ValueError: naming --filter, for a method that is not open-vocabulary.
    """
    if args.class_filter in (None, "none"):
        return None
    if not (spec.open_vocabulary or spec.names_segments):
        raise ValueError(
            f"--filter applies to methods that use class names; {spec.name} is {spec.kind} and has no --label."
        )
    return args.class_filter


def load_label_models(args: argparse.Namespace, resources: dict[str, Any]) -> None:
    """Load the labelling stage's models given by path (--captioner, --clip) once, on
    --label-device (default --device), in place: the class filter and the method share them.

    Raises:
        ValueError, OSError: naming --captioner, --clip or --label-device.
    """
    device = getattr(args, "label_device", None) or args.device
    todo = [name for name in ("captioner", "clip") if isinstance(resources.get(name), str)]
    if not todo:
        return
    from ..devices import check_device

    check_device(device)
    for name in todo:
        if name == "captioner":
            from ..labeling.captioner import load_captioner

            resources[name] = load_captioner(resources[name], device)
        else:
            from ..labeling.clip import load_clip

            resources[name] = load_clip(resources[name], device)


def build_filter(args: argparse.Namespace, name: str | None, resources: dict[str, Any], spec: Any) -> Any:
    """The class filter object for `name`, or None. It takes the CLIP model and the captioner
    from `resources` (loaded by `load_label_models`); those the method does not declare are
    removed from `resources` (they were the filter's).

    Raises:
        ValueError: naming --clip / --caption / --captioner, for what the filter lacks.
    """
    from ..labeling.filters import make_filter

    declared = {r.name for r in spec.resources}
    clip, captioner = resources.get("clip"), resources.get("captioner")
    for extra in ("clip", "captioner"):
        if extra in resources and extra not in declared and name in ("clip", "caption-clip"):
            del resources[extra]
    if name is None or name == "diffusion":
        return make_filter(name)
    if clip is None:
        raise ValueError(f"--filter {name} needs --clip: a CLIP model folder or a cached hub id.")
    if name == "caption-clip" and captioner is None and hasattr(args, "caption") and not args.caption:
        raise ValueError("--filter caption-clip needs a caption: --caption TEXT or --captioner PATH.")
    return make_filter(name, clip=clip, captioner=captioner)
