"""``diffuseg segment IMAGE... --method M --model ID|PATH --out DIR``.

Method options are generated from the config dataclasses of all registered methods (kebab-case
field names, default None); only the options the user set reach the method, so the library
default is the only default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "add_model_options", "add_method_options", "method_overrides",
           "load_backbone", "make_generator", "parse_dtype"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
_ALIASES = {"image_size": ["--size"]}


def parse_dtype(name: str | None) -> Any:
    """Map a CLI dtype name to a torch dtype (None -> None)."""
    import torch

    if name is None:
        return None
    if name not in _DTYPES:
        raise ValueError(f"`--dtype` must be one of {sorted(_DTYPES)}, got {name!r}.")
    return getattr(torch, _DTYPES[name])


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model --device --dtype --seed --batch-size (shared by segment, eval, inspect)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="hub id (local cache first), diffusers folder, .safetensors/.ckpt file, or 'toy' "
                        "(default: stable-diffusion-v1-5/stable-diffusion-v1-5)")
    g.add_argument("--model-config", default=None,
                   help="for single-file checkpoints: a diffusers folder/hub id with the matching configs")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default cpu)")
    g.add_argument("--dtype", default=None, choices=sorted(_DTYPES), help="weights dtype (default float32)")
    g.add_argument("--seed", type=int, default=None, help="seed of the torch.Generator for noise")
    g.add_argument("--batch-size", type=int, default=1, help="images per UNet pass (default 1)")


def _field_kind(tp: Any) -> tuple[str, Any]:
    """('bool'|'scalar'|'tuple', element type) for a dataclass field annotation."""
    if isinstance(tp, str):
        t = tp.replace(" ", "")
        if t.startswith("bool"):
            return "bool", bool
        base = t.split("|")[0]
        elem = {"int": int, "float": float, "str": str}
        if base.startswith("tuple["):
            inner = base[len("tuple["):].split(",")[0].rstrip("]")
            return "tuple", elem.get(inner, str)
        return "scalar", elem.get(base, str)
    origin = typing.get_origin(tp)
    if tp is bool:
        return "bool", bool
    if origin is tuple:
        return "tuple", typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return "scalar", (args[0] if args else tp)


def add_method_options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Add one option per config field of every registered method (default None).

    Returns:
        field name -> names of the methods that have it.
    """
    from ..methods import get_method, list_methods

    owners: dict[str, list[str]] = {}
    kinds: dict[str, tuple[str, Any]] = {}
    for name in list_methods():
        for f in dataclasses.fields(get_method(name).config_cls):
            owners.setdefault(f.name, []).append(name)
            kinds.setdefault(f.name, _field_kind(f.type))
    g = parser.add_argument_group("method options (default: the method's own; see the method's docs)")
    taken = set(parser._option_string_actions)  # e.g. --seed also feeds a method's `seed` field
    for field_name in sorted(owners):
        kind, elem = kinds[field_name]
        flags = [f"--{field_name.replace('_', '-')}", *_ALIASES.get(field_name, [])]
        if flags[0] in taken:
            owners[field_name] = ["*", *owners[field_name]]
            continue
        help_ = f"({', '.join(owners[field_name])})"
        if kind == "bool":
            g.add_argument(*flags, dest=field_name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind == "tuple":
            g.add_argument(*flags, dest=field_name, type=elem, nargs="+", default=None, help=help_)
        else:
            g.add_argument(*flags, dest=field_name, type=elem, default=None, help=help_)
    return owners


def method_overrides(args: argparse.Namespace, method: str, owners: dict[str, list[str]]) -> dict[str, Any]:
    """The method options the user set, checked against `method`.

    Raises:
        ValueError: if an option set by the user does not belong to `method`.
    """
    out: dict[str, Any] = {}
    for field_name, methods in owners.items():
        value = getattr(args, field_name, None)
        if value is None:
            continue
        if "*" in methods:  # a general option (e.g. --seed): passed on where the method has the field
            if method in methods:
                out[field_name] = value
            continue
        if method not in methods:
            raise ValueError(f"option --{field_name.replace('_', '-')} does not apply to method {method!r} "
                             f"(it belongs to {', '.join(methods)}).")
        out[field_name] = tuple(value) if isinstance(value, list) else value
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


def load_backbone(args: argparse.Namespace) -> Any:
    """Load and move the backbone named by --model/--device/--dtype."""
    from ..backbone import DEFAULT_MODEL, DiffusionBackbone

    dtype = parse_dtype(args.dtype)
    backbone = DiffusionBackbone.from_pretrained(args.model or DEFAULT_MODEL, torch_dtype=dtype,
                                                 config=getattr(args, "model_config", None))
    return backbone.to(args.device, dtype)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("segment", help="segment images and write label maps, overlays and JSON",
                              description="Segment images; per image writes NAME.labels.png, "
                                          "NAME.overlay.png and NAME.json (COCO RLE) into --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--method", default="diffseg", help="segmentation method (default diffseg)")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_options(p)
    p.set_defaults(func=run, _owners=add_method_options(p))


def _names(paths: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..backbone import ModelNotFoundError, NotADiffusionModelError
    from ..imageio import ImageLoadError, load_image
    from ..methods import get_method
    from ..segmenter import Segmenter
    from ..types import OutputExistsError

    try:
        spec = get_method(args.method)
        overrides = method_overrides(args, spec.name, args._owners)
        config = spec.make_config(**overrides)
        if args.batch_size < 1:
            raise ValueError(f"`--batch-size` must be >= 1, got {args.batch_size}.")
        parse_dtype(args.dtype)
    except ValueError as e:
        print(f"diffuseg segment: error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    names = _names(args.images)
    failed: dict[str, str] = {}
    todo = []
    for path, name in zip(args.images, names, strict=False):
        existing = [p for p in (out_dir / f"{name}.labels.png", out_dir / f"{name}.overlay.png",
                                out_dir / f"{name}.json") if p.exists()]
        if existing and not args.overwrite:
            failed[path] = f"output exists ({existing[0]}); use --overwrite"
        else:
            todo.append((path, name))
    backbone = None
    needs_model = callable(spec.requires) or not spec.requires.is_empty
    if todo and needs_model:
        try:
            backbone = load_backbone(args)
        except (ModelNotFoundError, NotADiffusionModelError) as e:
            print(f"diffuseg segment: error: {e}", file=sys.stderr)
            return 2
    try:
        segmenter = Segmenter(backbone, spec, batch_size=args.batch_size, **overrides) if todo else None
    except ValueError as e:
        print(f"diffuseg segment: error: {e}", file=sys.stderr)
        return 2
    generator = make_generator(args.seed, args.device)
    bar = tqdm(total=len(todo), desc="segment", unit="img", disable=args.no_progress or not todo, file=sys.stderr)
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start:start + args.batch_size]
        loaded = []
        for path, name in chunk:
            try:
                loaded.append((path, name, load_image(path)))
            except ImageLoadError as e:
                failed[path] = str(e)
                bar.update(1)
        groups: dict[tuple[int, int], list] = {}
        for item in loaded:  # a batch shares one model size (matters for keep_aspect)
            groups.setdefault(item[2].size if config and getattr(config, "resize_mode", "crop") == "keep_aspect"
                              else (0, 0), []).append(item)
        for group in groups.values():
            try:
                results = segmenter.segment_batch([im for _, _, im in group], generator=generator)
            except ValueError as e:
                for path, _, _ in group:
                    failed[path] = str(e)
                bar.update(len(group))
                continue
            for (path, name, image), seg in zip(group, results, strict=False):
                seg.meta["source"] = str(path)
                model_view = image.crop(tuple(seg.meta["crop_box"]))
                try:
                    seg.save(out_dir, name, model_view, overwrite=args.overwrite)
                except (OutputExistsError, OSError) as e:
                    failed[path] = str(e)
                bar.update(1)
    bar.close()
    done = len(args.images) - len(failed)
    for path, reason in failed.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    print(f"{done} of {len(args.images)} image(s) segmented into {out_dir}/", file=sys.stderr)
    return 0 if not failed else 1
