"""CLI helpers of the query and labelling flags: the checks of --method, its options, --classes,
--caption, the resources and --filter together (`query_flags`), and the labelling stage's models
and class filter from the flags (the work is `diffuseg.labeling.stage`'s)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ._method_options import method_overrides
from ._options import check_runtime, resource_values

__all__ = ["check_filter", "load_label_models", "build_filter", "QueryFlags", "query_flags"]


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
    """Load the labelling models given by path (--captioner, --clip) once, on --label-device
    (default --device), in place (`diffuseg.labeling.stage.load_label_models`)."""
    from ..labeling.stage import load_label_models as load

    load(resources, getattr(args, "label_device", None) or args.device)


def build_filter(args: argparse.Namespace, name: str | None, resources: dict[str, Any], spec: Any) -> Any:
    """The class filter of --filter, or None (`diffuseg.labeling.stage.build_filter`)."""
    from ..labeling.stage import build_filter as build

    has_caption = bool(args.caption) if hasattr(args, "caption") else True  # eval: captions come per image
    return build(name, resources, {r.name for r in spec.resources}, has_caption=has_caption)


@dataclass
class QueryFlags:
    """What the method and query flags of ``segment`` / ``batch`` ask for, checked.

    Attributes:
        spec: the method's `MethodSpec`.
        overrides: the config fields the user set, plus ``label`` when --classes or --caption
            turn on segment naming for an unsupervised method.
        config: the config of the user's own settings (no preset), for `MethodSpec.needs_model`.
        classes: the class vocabulary of --classes, parsed once (``()`` without).
        resources: the extra models by name (--checkpoint, --clip, --resource NAME=VALUE...).
        class_filter: the --filter name, or None.
    """

    spec: Any
    overrides: dict[str, Any]
    config: Any
    classes: tuple[Any, ...]
    resources: dict[str, str]
    class_filter: str | None


def query_flags(args: argparse.Namespace, method: str | None = None, among: tuple[str, ...] = ()) -> QueryFlags:
    """Check --method, its options, the runtime flags, --classes, --caption, the resources and
    --filter together, before anything is loaded.

    Raises:
        ValueError: naming the flag: a --classes value `diffuseg.labeling.load_classes` refuses
            (a missing file, an unknown dataset, an empty list), an empty --caption, options of
            another method, class names or a caption for a method that would ignore them, a
            method or --label that needs --classes (or a caption source) without them, --filter
            without --classes.

    Args:
        method: the method checked (default --method); `among`: every method of a run of
            several (see `_method_options.method_overrides`).
    """
    from ..labeling import load_classes
    from ..methods import get_method
    from ..plan import check_caption

    spec = get_method(method or args.method)
    overrides = method_overrides(args, spec.name, args._owners, among)
    config = spec.make_config(None, **overrides)  # the user's values are valid (preset aside)
    check_runtime(args)
    classes = load_classes(args.classes) if args.classes is not None else ()
    check_caption(args.caption)
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
    return QueryFlags(spec, overrides, config, classes, resources, class_filter)
