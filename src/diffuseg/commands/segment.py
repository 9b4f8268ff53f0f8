"""``diffuseg segment IMAGE... --method M --model ID|PATH --out DIR``.

Each image is segmented whole, at its own resolution: the model sees the full image (aspect
kept, each side rounded to the model's size multiple, longer side = the method's input size)
and the labels are resized back (nearest) to the image's own frame. Per image it writes
``NAME.labels.png``, ``NAME.overlay.png`` and ``NAME.json`` (COCO RLE, the config, the model
preset, the frame and the seeds). The images are segmented by the loop of ``diffuseg batch
--engine local`` (`diffuseg.engine.runner.run_batch`): each image's noise comes from a generator
seeded from (--seed, its output name), and files are written atomically, so ``segment`` and
``batch`` write the same bytes for the same images, seed, batch size and device. Exit codes: 0
all done, 1 some images failed (each reported) or the output folder filled up, 2 bad usage, an
unusable output folder or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import COMMANDS
from ._method_options import add_method_options, method_help
from ._options import HelpFormatter, add_model_options, add_query_options, fail
from ._window_options import add_window_option
from .batch import SEED_HELP, add_output_options, failed_name, make_jobs, message, written_into

#: What ``segment`` says when interrupted (Ctrl-C).
RESUME_HINT = "rerun with --skip-existing to finish (images already written are kept)"

__all__ = ["register", "run"]

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
    p.add_argument(
        "--method",
        default="diffseg",
        help="segmentation method (default diffseg), or a comma-separated list sharing the model passes where "
        f"they agree (outputs in --out/METHOD):\n{method_help()}",
    )
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    done = p.add_mutually_exclusive_group()
    done.add_argument("--overwrite", action="store_true", help="replace existing output files")
    done.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip images whose outputs all exist and whose JSON records this run's method, settings, model, "
        "seed and classes (resume an interrupted run); outputs of other settings stop the run",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_options(p)
    add_model_options(p, seed_help=SEED_HELP)
    add_query_options(p)
    add_window_option(p)
    p.set_defaults(func=run, _owners=add_method_options(p), resume_hint=RESUME_HINT)


def _check_images(paths: list[str]) -> None:
    """Refuse a folder or a special file (FIFO, device) among the IMAGE arguments before any work
    (a missing file fails only itself, later).

    Raises:
        ValueError: naming the first such IMAGE.
    """
    for path in paths:
        p = Path(path)
        if p.is_dir():
            raise ValueError(
                f"IMAGE {path} is a folder; `diffuseg batch {path}` segments the images in a folder "
                f"(or give the files: {Path(path) / '*.jpg'})."
            )
        if p.exists() and not p.is_file():
            raise ValueError(f"IMAGE {path} is not a regular file (a FIFO, socket or device); give image files.")


def _sort_inputs(args: argparse.Namespace, job: Any, items: list[Any]) -> tuple[list[Any], list[Any], dict[str, str]]:
    """(done before, to do, failed: source -> reason) by the outputs each item already has (for
    the jobs of several methods: done when done for all; failed when failed for one).

    Raises:
        ValueError (`OutputMismatchError`): with --skip-existing, outputs that record other settings.
    """
    from ..engine.resume import check_done
    from ..outputs import existing_outputs, output_suffixes

    jobs = job if isinstance(job, list) else [job]
    done_before, todo, failed = [], [], {}
    for item in items:
        states = []
        for j in jobs:
            suffixes = output_suffixes(j.save)
            existing = existing_outputs(j.out_dir, item.name, suffixes)
            if args.skip_existing and len(existing) == len(suffixes):
                states.append("done")
            elif existing and not (args.overwrite or args.skip_existing):
                failed[item.source] = f"output exists ({existing[0]}); use --overwrite or --skip-existing"
                break
            else:
                states.append("todo")  # --skip-existing rewrites an item's partial outputs
        if item.source in failed:
            continue
        (done_before if all(s == "done" for s in states) else todo).append(item)
    for j in jobs:
        check_done(j, done_before)
    return done_before, todo, failed


def run(args: argparse.Namespace) -> int:
    """Run ``diffuseg segment``; returns the exit code."""
    from ..engine.inputs import file_items
    from ..engine.runner import run_batch
    from ..engine.work import OutputFullError
    from ..outputs import check_out_dir

    try:
        _check_images(args.images)
        job = make_jobs(args)
        check_out_dir(args.out)
        items = file_items(args.images)
        done_before, todo, failed = _sort_inputs(args, job, items)
    except ValueError as e:
        return fail("segment", message(e))
    if todo:
        try:
            summary = run_batch(
                job, todo, progress=not args.no_progress, overwrite=True, wording=message, failure_log=False,
                desc="segment",
            )  # fmt: skip
        except OutputFullError as e:
            return fail("segment", f"{e}; free some space and rerun with --skip-existing to finish", code=1)
        except (ValueError, OSError) as e:  # a model or setting that cannot be used
            return fail("segment", message(e))
    per_item = len(job) if isinstance(job, list) else 1  # results per image
    lost = len(failed) * per_item  # an image refused before the run loses all its results
    if todo:
        failed.update((failed_name(rec), rec["error"]) for rec in summary.failures)
        lost += len(summary.failures)
    for path, reason in failed.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    n = len(items) * per_item
    skipped = f" ({len(done_before)} already done)" if done_before else ""
    print(f"{n - lost} of {n} {written_into(job, args.out)}{skipped}", file=sys.stderr)
    return 0 if not failed else 1
