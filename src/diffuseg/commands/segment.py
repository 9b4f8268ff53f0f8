"""``diffuseg segment IMAGE... --method M --model ID|PATH --out DIR``.

Each image is segmented whole, at its own resolution: the model sees the full image (aspect
kept, each side rounded to the model's size multiple, longer side = the method's input size)
and the labels are resized back (nearest) to the image's own frame. Per image it writes
``NAME.labels.png``, ``NAME.overlay.png`` and ``NAME.json`` (COCO RLE, the config, the model
preset and the frame). Exit codes: 0 all done, 1 some images failed (each reported), 2 bad
usage, an unusable output folder or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import COMMANDS
from ._labeling import build_filter, load_label_models, query_flags
from ._options import (
    HelpFormatter,
    add_method_options,
    add_model_options,
    add_query_options,
    fail,
    flag_message,
    load_backbone,
    make_generator,
    method_help,
)

__all__ = ["register", "run", "check_out_dir", "output_names"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "segment",
        help=COMMANDS["segment"],
        formatter_class=HelpFormatter,
        description="Segment whole images at their own resolution; per image writes NAME.labels.png, "
        "NAME.overlay.png and NAME.json (COCO RLE) into --out. List options take one "
        "comma-separated value (--kl-thresholds 0.05,0.05,0.05).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--method", default="diffseg", help=f"segmentation method (default diffseg):\n{method_help()}")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    done = p.add_mutually_exclusive_group()
    done.add_argument("--overwrite", action="store_true", help="replace existing output files")
    done.add_argument(
        "--skip-existing", action="store_true", help="skip images whose outputs all exist (resume an interrupted batch)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_options(p)
    add_query_options(p)
    p.set_defaults(func=run, _owners=add_method_options(p))


def check_out_dir(out: Path) -> None:
    """Create `out` if needed and make sure files can be written there.

    Raises:
        ValueError: if `out` is a file, cannot be created, or is not writable.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out` {out} is a file, not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"`out` {out} cannot be written: {e.strerror or e}.") from None


def output_names(paths: list[str]) -> list[tuple[str, str]]:
    """(path, output stem) per distinct input: a path given twice is one input; distinct files
    with the same stem get ``stem``, ``stem-2``, ..."""
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


def run(args: argparse.Namespace) -> int:
    from ..types import OUTPUTS

    try:
        flags = query_flags(args)
        spec, overrides, config, classes = flags.spec, flags.overrides, flags.config, flags.classes
        resources, class_filter = flags.resources, flags.class_filter
        out_dir = Path(args.out)
        check_out_dir(out_dir)
    except ValueError as e:
        return fail("segment", flag_message(e))
    inputs = output_names(args.images)
    done_before = []
    todo = []
    failed: dict[str, str] = {}
    for path, name in inputs:
        existing = [out_dir / f"{name}{ext}" for ext in OUTPUTS if (out_dir / f"{name}{ext}").exists()]
        if args.skip_existing and len(existing) == len(OUTPUTS):
            done_before.append(path)
        elif existing and not (args.overwrite or args.skip_existing):
            failed[path] = f"output exists ({existing[0]}); use --overwrite or --skip-existing"
        else:
            todo.append((path, name))
    backbone = None
    if todo and spec.needs_model(config):
        try:
            backbone = load_backbone(args)
        except (OSError, ValueError) as e:  # ModelNotFoundError, NotADiffusionModelError
            return fail("segment", flag_message(e))
    segmenter = None
    if todo:
        from ..segmenter import Segmenter

        try:
            load_label_models(args, resources)
            class_filter = build_filter(args, class_filter, resources, spec)
            segmenter = Segmenter(
                backbone, spec, batch_size=args.batch_size, resources=resources, device=args.device,
                class_filter=class_filter, **overrides,
            )  # fmt: skip
            if classes:  # the class list itself must suit the model (token budget) before any image
                from ..plan import Query

                spec.plan(segmenter.config, Query(classes=classes, caption=args.caption), backbone, {})
        except (ValueError, OSError) as e:
            return fail("segment", flag_message(e))
    _segment_all(args, segmenter, todo, classes, out_dir, failed)
    for path, reason in failed.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    n = len(inputs)
    skipped = f" ({len(done_before)} already done)" if done_before else ""
    print(f"{n - len(failed)} of {n} image(s) segmented into {out_dir}/{skipped}", file=sys.stderr)
    return 0 if not failed else 1


def _segment_all(
    args: argparse.Namespace,
    segmenter: Any,
    todo: list[tuple[str, str]],
    classes: Any,
    out_dir: Path,
    failed: dict[str, str],
) -> None:
    from tqdm.auto import tqdm

    from ..imageio import ImageLoadError, load_image
    from ..plan import Query
    from ..types import OutputExistsError

    if not todo:
        return
    generator = make_generator(args.seed, args.device)
    bar = tqdm(total=len(todo), desc="segment", unit="img", disable=args.no_progress, file=sys.stderr)
    overwrite = args.overwrite or args.skip_existing  # skip-existing rewrites an item's partial outputs
    for start in range(0, len(todo), args.batch_size):
        loaded = []
        for path, name in todo[start : start + args.batch_size]:
            try:
                loaded.append((path, name, load_image(path)))
            except ImageLoadError as e:
                failed[path] = str(e)
                bar.update(1)
        queries = [Query(image=im, classes=classes, caption=args.caption, id=name) for _, name, im in loaded]
        results = segmenter.segment_batch(queries, generator=generator, return_errors=True)
        for (path, name, image), seg in zip(loaded, results, strict=True):
            bar.update(1)
            if isinstance(seg, Exception):
                failed[path] = flag_message(seg)
                continue
            seg = seg.in_input_frame()
            seg.meta["source"] = str(path)
            try:
                seg.save(out_dir, name, image, overwrite=overwrite)
            except (OutputExistsError, OSError) as e:
                failed[path] = str(e)
    bar.close()
