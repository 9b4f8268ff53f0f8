"""CLI helpers of the labelling stage: --filter, and the CLIP model and captioner that the
class filter and the methods share (loaded once, on --label-device)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

__all__ = ["add_filter_option", "check_filter", "load_label_models", "build_filter", "QueryFlags", "query_flags"]


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


@dataclass
class QueryFlags:
    """What the method and query flags of ``segment`` / ``batch`` ask for, checked.

    Attributes:
        spec: the method's `MethodSpec`.
        overrides: the config fields the user set, plus ``label`` when --classes or --caption
            turn on segment naming for an unsupervised method.
        config: the config of the user's own settings (no preset), for `MethodSpec.needs_model`.
        classes: the class vocabulary of --classes (``()`` without).
        resources: the extra models by name (--checkpoint, --clip, --resource NAME=VALUE...).
        class_filter: the --filter name, or None.
    """

    spec: Any
    overrides: dict[str, Any]
    config: Any
    classes: tuple[Any, ...]
    resources: dict[str, str]
    class_filter: str | None


def query_flags(args: argparse.Namespace) -> QueryFlags:
    """Check --method, its options, the runtime flags, --classes, --caption, the resources and
    --filter together, before anything is loaded.

    Raises:
        ValueError: naming the flag: options of another method, class names or a caption for a
            method that would ignore them, a method or --label that needs --classes (or a
            caption source) without them, --filter without --classes.
    """
    from ..labeling import load_classes
    from ..methods import get_method
    from ._options import check_runtime, method_overrides, resource_values

    spec = get_method(args.method)
    overrides = method_overrides(args, spec.name, args._owners)
    config = spec.make_config(None, **overrides)  # the user's values are valid (preset aside)
    check_runtime(args)
    classes = load_classes(args.classes) if args.classes is not None else ()
    given = [flag for flag, value in (("--classes", args.classes), ("--caption", args.caption)) if value]
    if spec.names_segments and given:  # an unsupervised method names its segments from them
        if len(given) == 1:
            overrides.setdefault("label", "caption" if given == ["--caption"] else "classes")
        used = {"classes": "--classes", "clip": "--classes", "caption": "--caption"}.get(overrides.get("label"))
        given = [flag for flag in given if flag != used]
    if given and not spec.open_vocabulary:
        raise ValueError(
            f"{' and '.join(given)} apply to open-vocabulary methods; {spec.name} is {spec.kind} and would ignore them."
        )
    if overrides.get("label") in ("classes", "clip") and not classes:
        raise ValueError(f"--label {overrides['label']} names the segments from --classes; give --classes.")
    if spec.needs_classes and not classes:
        raise ValueError(
            f"method {spec.name} needs --classes: names ('cat,sofa,tv|monitor'), a file with one "
            "class per line, or a dataset's list ('dataset:voc21')."
        )
    resources = resource_values(args)
    if overrides.get("label") == "caption" and not args.caption and "captioner" not in resources:
        raise ValueError(
            "--label caption names the segments from the nouns of a caption; give --caption or --captioner."
        )
    class_filter = check_filter(args, spec)
    if class_filter and not classes:
        raise ValueError("--filter chooses among --classes; give --classes.")
    return QueryFlags(spec, overrides, config, tuple(classes), resources, class_filter)
