"""Options shared by ``segment``, ``eval`` and ``inspect``: model, method and query flags.

Method options are generated from the config dataclasses of the registered methods (kebab-case
field names, default None), grouped per method with each default and allowed values. Only the
options the user set reach the library, so the library default (or the model's preset) is the
only default. List options take one comma-separated value (``--kl-thresholds 0.05,0.05,0.05``)
so they never swallow image paths.

Library errors name library arguments (`image_size`); `flag_message` adds the CLI flag.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any

from ..config_fields import show_value
from ._method_options import _ALIASES, _method_fields, _methods

__all__ = [
    "add_model_options",
    "add_query_options",
    "add_resource_option",
    "resource_values",
    "parse_resources",
    "show_value",
    "add_filter_option",
    "make_generator",
    "load_backbone",
    "flag_message",
    "fail",
    "HelpFormatter",
]

#: Library argument -> CLI flag, for arguments that are not method options.
_GENERAL_FLAGS = {
    "device": "--device",
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "classes": "--classes",
    "resources": "--resource",
    "class_filter": "--filter",
    "caption": "--caption",
    "label_device": "--label-device",
    "clip": "--clip",
    "captioner": "--captioner",
    "limit": "--limit",
    "model": "--model",
    "config": "--model-config",
    "drop_t5": "--drop-t5",
    "overwrite": "--overwrite",
    "resume": "--resume",
    "tune_background": "--tune-background",
    "out_dir": "--out",
    "out": "--out",
    "export": "--export",
}


class HelpFormatter(argparse.HelpFormatter):
    """Keeps the line breaks of a help text (one method per line under --method)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for part in text.splitlines():
            lines += super()._split_lines(part, width) or [""]
        return lines


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``diffuseg COMMAND: error: MESSAGE`` to stderr and return `code`."""
    print(f"diffuseg {command}: error: {message}", file=sys.stderr)
    return code


def flag_message(error: BaseException | str) -> str:
    """The message of a library error in CLI terms: each backticked library argument that has a
    flag is replaced by it ("`image_size` must be ..." -> "--size must be ...",
    "`overwrite=True`" -> "--overwrite")."""
    fields = _method_fields()

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        found = _ALIASES.get(name, [None])[0] or _GENERAL_FLAGS.get(name)
        if found is None and name in fields:
            found = "--" + name.replace("_", "-")
        if found is None:
            return match.group(0)
        if value in (None, "=True"):
            return found
        return f"{found} {value[1:]}"

    return re.sub(r"`([a-z_][a-z0-9_]*)(=[^`]*)?`", flag, str(error))


def add_model_options(
    parser: argparse.ArgumentParser, seed_help: str = "seed of the torch.Generator for noise"
) -> None:
    """--model --model-config --device --dtype --drop-t5 --seed (`seed_help`) --batch-size."""
    from ..dtypes import DTYPES

    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="hub id (local cache first), diffusers folder, .safetensors/.ckpt file, 'toy' or 'toy-mmdit' "
        "(default: stable-diffusion-v1-5/stable-diffusion-v1-5)",
    )
    g.add_argument(
        "--model-config",
        default=None,
        help="for single-file checkpoints: a diffusers folder/hub id with the matching configs; for an SD3/SD3.5/"
        "FLUX.1 transformer file, the model's StableDiffusion3Pipeline/FluxPipeline folder (VAE, text encoders)",
    )
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default cpu)")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="weights dtype (default float32)")
    g.add_argument(
        "--drop-t5",
        action="store_true",
        help="SD3 / SD3.5: leave the T5 text encoder out to save memory (its text tokens become zeros)",
    )
    g.add_argument("--seed", type=parse_seed, default=None, help=seed_help)
    g.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")


def finite_float(text: str) -> float:
    """A float flag's argparse ``type`` that refuses nan and inf (no setting means them; range
    checks written as comparisons let nan through)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


finite_float.__name__ = "float"


def parse_seed(text: str) -> int:
    """--seed as an argparse ``type``: an int in the range `diffuseg.ops.noise.check_seed` allows
    (the seeds `torch.Generator.manual_seed` takes, without the negative aliases); its ValueError
    becomes an ArgumentTypeError, so argparse exits 2 with the flag named."""
    from ..ops.noise import check_seed

    try:
        return check_seed(int(text))
    except ValueError as e:
        if "`seed`" not in str(e):  # not a number: argparse's own "invalid int value: 'x'"
            raise
        raise argparse.ArgumentTypeError(str(e).replace("`seed` ", "", 1)) from None


parse_seed.__name__ = "int"


def add_query_options(parser: argparse.ArgumentParser) -> None:
    """--classes --caption --resource: what the user knows about the images, and extra models."""
    g = parser.add_argument_group("what to look for (open-vocabulary methods)")
    g.add_argument(
        "--classes",
        default=None,
        help="class names, comma-separated, synonyms with '|' ('cat,sofa,tv|monitor'); a file with one class "
        "per line; or a dataset's classes ('dataset:voc21'); a class named 'background' gets a constant score. "
        "A value that reads as a path (it ends in .txt, .csv, .json, .lst, .names, ..., or is one name with a '/') "
        "must be an existing file; a class name with a '/' goes among other classes ('cat,tv/monitor'), with a "
        "synonym ('tv/monitor|tv') or in a file",
    )
    g.add_argument("--caption", default=None, help="a caption / prompt for every image (not empty)")
    add_filter_option(g)
    add_resource_option(g)


def add_filter_option(parser: Any) -> None:
    """--filter and --label-device: which of the classes each image gets
    (`diffuseg.labeling.filters.FILTERS`), and where the labelling models run."""
    from ..labeling.settings import FILTERS

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


def _resources() -> dict[str, tuple[str, list[str]]]:
    """Resource name -> (description, methods declaring it), over the registered methods."""
    out: dict[str, tuple[str, list[str]]] = {}
    for spec in _methods():
        for res in spec.resources:
            out.setdefault(res.name, (res.description, []))[1].append(spec.name)
    return out


def add_resource_option(parser: Any) -> None:
    """--NAME VALUE for each resource a registered method declares (e.g. --checkpoint DIR), and
    the generic --resource NAME=VALUE (repeatable)."""
    taken = set(parser._option_string_actions) if hasattr(parser, "_option_string_actions") else set()
    for name, (description, methods) in _resources().items():
        flag = "--" + name.replace("_", "-")
        if flag in taken:
            continue
        parser.add_argument(
            flag,
            dest=f"resource_{name}",
            default=None,
            metavar="PATH",
            help=f"{description} ({', '.join(methods)})",
        )
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra model a method declares (path or hub id), by its name; repeatable",
    )


def resource_values(args: argparse.Namespace) -> dict[str, str]:
    """The resources the user gave: ``--NAME VALUE`` flags and ``--resource NAME=VALUE`` items.

    Raises:
        ValueError: on a malformed item, or a resource given both ways.
    """
    out = parse_resources(getattr(args, "resource", []) or [])
    for name in _resources():
        value = getattr(args, f"resource_{name}", None)
        if value is None:
            continue
        if name in out:
            raise ValueError(f"--{name.replace('_', '-')} and --resource {name}=... both given; give one.")
        out[name] = value
    return out


def parse_resources(items: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` -> dict.

    Raises:
        ValueError: on an item without "=".
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"`resources`: expected NAME=VALUE, got {item!r}.")
        out[name.strip()] = value.strip()
    return out


def make_generator(seed: int | None, device: str) -> Any:
    """A torch.Generator on `device` seeded with `seed` (None: a random seed is drawn)."""
    import torch

    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def check_runtime(args: argparse.Namespace) -> None:
    """Validate --device, --dtype and --batch-size before anything heavy is loaded.

    Raises:
        ValueError: naming the bad argument.
    """
    from ..devices import check_device
    from ..dtypes import parse_dtype

    check_device(args.device)
    parse_dtype(args.dtype)
    if args.batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {args.batch_size}.")


def load_backbone(args: argparse.Namespace) -> Any:
    """The backbone named by --model, --model-config, --device, --dtype and --drop-t5
    (`diffuseg.backbone.load_backbone`)."""
    from ..backbone.load import load_backbone as load

    return load(
        args.model, config=getattr(args, "model_config", None), device=args.device, dtype=args.dtype,
        drop_t5=getattr(args, "drop_t5", False),
    )  # fmt: skip
