"""``diffuseg batch INPUT --out DIR --method M [--engine local|ray] [--address A] [--actors N] ...``.

Segments many images with one method, on this machine (``--engine local``, default) or on a
Ray cluster (``--engine ray``: a local Ray instance, or ``--address auto|[ray://]HOST:PORT``).
INPUT is a folder, a glob, a text file of paths, one image, or ``dataset:NAME`` (``--root``).
Outputs are those of ``diffuseg segment`` (``NAME.labels.png``, ``NAME.overlay.png``,
``NAME.json``); images whose outputs all exist are skipped, so rerunning an interrupted run
completes it. Each image's noise comes from a generator seeded from (--seed, its name): the
outputs do not depend on the engine, the number of actors or the order; byte-identical outputs
need the same --batch-size (batched model calls round differently) and --device.
Failed images are listed in ``DIR/failures.jsonl``.

Exit codes: 0 all done, 1 some images failed (or the output folder filled up, or workers kept
dying), 2 bad usage, an unreachable --address or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from . import COMMANDS

__all__ = [
    "register",
    "run",
    "make_job",
    "make_jobs",
    "failed_name",
    "written_into",
    "message",
    "add_engine_options",
    "add_output_options",
    "engine_options",
    "SEED_HELP",
    "RESUME_HINT",
]

logger = logging.getLogger(__name__)

#: --seed of ``segment`` and ``batch``.
SEED_HELP = "the run's seed: each image's noise comes from (seed, its output name) (default 0)"
#: Library arguments of the engine -> their flags (for error messages).
_ENGINE_FLAGS = {
    "input": "INPUT",
    "engine": "--engine",
    "address": "--address",
    "actors": "--actors",
    "gpus_per_actor": "--gpus-per-actor",
    "cpus_per_actor": "--cpus-per-actor",
    "num_cpus": "--num-cpus",
    "seed": "--seed",
    "root": "--root",
    "split": "--split",
    "save": "--save",
    "max_pixels": "--max-pixels",
}
#: What ``batch`` says when interrupted (Ctrl-C).
RESUME_HINT = "rerun the same command to finish (images already written are skipped)"


def message(error: BaseException) -> str:
    """A library error in the words of ``segment`` / ``batch``: flags instead of arguments."""
    from ._options import flag_message

    text = flag_message(error)
    for name, flag in _ENGINE_FLAGS.items():
        text = text.replace(f"`{name}`", flag)
    return text


def register(subparsers: Any) -> None:
    from ._method_options import add_method_options, method_help
    from ._options import HelpFormatter, add_model_options, add_query_options

    p = subparsers.add_parser(
        "batch",
        help=COMMANDS["batch"],
        formatter_class=HelpFormatter,
        description="Segment many images, here or on a Ray cluster; per image writes NAME.labels.png, "
        "NAME.overlay.png and NAME.json into --out; rerun the same command to resume.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a folder of images, a glob ('photos/**/*.jpg'), a text file of paths (one per line), "
        "one image, or dataset:NAME (with --root; dataset:synthetic needs none)",
    )
    p.add_argument("--root", default=None, help="dataset root folder (INPUT dataset:NAME)")
    p.add_argument("--split", default=None, help="dataset split (INPUT dataset:NAME; default the papers')")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of INPUT")
    p.add_argument(
        "--method",
        default="diffseg",
        help="segmentation method (default diffseg), or a comma-separated list sharing the model passes where "
        f"they agree (outputs in --out/METHOD):\n{method_help()}",
    )
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs exist (default: skip them when their JSON records this run's method, "
        "settings, model, seed and classes; outputs of other settings stop the run)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_options(p)
    add_engine_options(p)
    add_model_options(p, seed_help=SEED_HELP)
    add_query_options(p)
    from ._window_options import add_window_option

    add_window_option(p)
    p.set_defaults(func=run, _owners=add_method_options(p), resume_hint=RESUME_HINT)


def _extra_saves() -> tuple[str, ...]:
    from ..outputs import DEFAULT_SAVE, SAVE_KINDS

    return tuple(k for k in SAVE_KINDS if k not in DEFAULT_SAVE)


def _save_kinds(text: str) -> tuple[str, ...]:
    """--save's parser: comma-separated kinds of `_extra_saves`."""
    from ..config_fields import csv_parser

    kinds = csv_parser(str)(text)
    unknown = [k for k in kinds if k not in _extra_saves()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind {unknown[0]!r}; choose from {', '.join(_extra_saves())}")
    return kinds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--save --no-overlay --max-pixels (``segment`` and ``batch``)."""
    from ..engine.work import MAX_PIXELS

    g = parser.add_argument_group("outputs")
    g.add_argument(
        "--save",
        type=_save_kinds,
        default=(),
        metavar="KINDS",
        help="also write, per image: 'npy' (NAME.labels.npy, the label map as a NumPy array: uint8, or uint16 "
        "above 256 labels) and/or 'masks' (NAME.masks/, one black-and-white PNG per segment, ID-NAME.png when "
        "segments have names), comma-separated",
    )
    g.add_argument("--no-overlay", action="store_true", help="do not write NAME.overlay.png")
    g.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help=f"refuse images larger than this (width x height, read from the file's header before decoding; "
        f"default {MAX_PIXELS:,})",
    )


def _save(args: argparse.Namespace) -> tuple[str, ...]:
    """The kinds of output file of --save and --no-overlay."""
    from ..outputs import DEFAULT_SAVE

    kinds = DEFAULT_SAVE + tuple(args.save)
    return tuple(k for k in kinds if not (args.no_overlay and k == "overlay"))


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--engine --address --actors --gpus-per-actor --cpus-per-actor --num-cpus --threads."""
    from ..engine import ENGINES

    g = parser.add_argument_group("engine")
    g.add_argument("--engine", default="local", choices=ENGINES, help="where to run (default local)")
    g.add_argument(
        "--address",
        default=None,
        help="Ray cluster: 'auto' (the cluster of `ray start` on this machine) or [ray://]HOST:PORT "
        "(default: start a local Ray instance); --engine ray only",
    )
    g.add_argument("--actors", type=int, default=None, help="actors, one model each (default 1); --engine ray only")
    g.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor, e.g. 1 or 0.5 (default 0: CPU)")
    g.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        help="CPUs per actor (default: 1 with GPUs; CPU-only: an equal share of the cluster's CPUs, at most 1)",
    )
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default all)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: local engine torch's; Ray CPU actors the cluster's CPUs "
        "divided by --actors, at least 1; Ray GPU actors 1)",
    )


def engine_options(args: argparse.Namespace) -> Any:
    """The `RayOptions` of the engine flags (None for the local engine).

    Raises:
        ValueError: naming a Ray-only flag given with --engine local, or a bad value.
    """
    ray_flags = {
        "--address": args.address,
        "--actors": args.actors,
        "--gpus-per-actor": args.gpus_per_actor,
        "--cpus-per-actor": args.cpus_per_actor,
        "--num-cpus": args.num_cpus,
    }
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}.")
    if args.engine == "local":
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --engine ray; got --engine local.")
        return None
    if args.address is not None and args.num_cpus is not None:
        raise ValueError("--num-cpus sizes a local Ray instance; with --address the cluster has its own.")
    from ..engine.ray_engine import RayOptions

    return RayOptions(
        actors=1 if args.actors is None else args.actors,
        gpus_per_actor=args.gpus_per_actor or 0.0,
        cpus_per_actor=args.cpus_per_actor,
        address=args.address,
        num_cpus=args.num_cpus,
        threads=args.threads,
    )


def make_job(args: argparse.Namespace, flags: Any, out_dir: str | None = None) -> Any:
    """The `Job` of the flags of ``segment`` / ``batch``, checked by `query_flags` (`flags`),
    writing into `out_dir` (default --out).

    Raises:
        ValueError: naming `seed`, if it is negative.
    """
    from ..engine.seeding import resolve_seed
    from ..engine.work import Job

    given = {"max_pixels": args.max_pixels} if args.max_pixels is not None else {}
    if getattr(args, "window", None) is not None:  # ``segment`` / ``batch --window``
        from ..windowed import check_windowed

        check_windowed(flags.spec, args.window, None)  # a method without class scores: before a model loads
        given["window"] = args.window
    return Job(
        method=flags.spec.name,
        out_dir=args.out if out_dir is None else out_dir,
        overrides=flags.overrides,
        seed=resolve_seed(args.seed),
        batch_size=args.batch_size,
        model=args.model,
        model_config=args.model_config,
        device=args.device,
        dtype=args.dtype,
        drop_t5=args.drop_t5,
        classes=flags.classes,
        caption=args.caption,
        resources=flags.resources,
        class_filter=flags.class_filter,
        label_device=getattr(args, "label_device", None),
        threads=getattr(args, "threads", None),
        needs_model=flags.spec.needs_model(flags.config),
        save=_save(args),
        **given,
    )


def failed_name(record: dict[str, Any]) -> str:
    """A failed record's image, with its method in a run of several."""
    return f"{record['source']} ({record['method']})" if "method" in record else str(record["source"])


def written_into(job: Any, out: str) -> str:
    """The end of the closing line: "image(s) segmented into OUT/", or for a run of several
    methods "(image, method) result(s) written into OUT/{a,b}/"."""
    from pathlib import Path

    if not isinstance(job, list):
        return f"image(s) segmented into {Path(out)}/"
    return f"(image, method) result(s) written into {Path(out)}/{{{','.join(j.method for j in job)}}}/"


def make_jobs(args: argparse.Namespace) -> Any:
    """The `Job` of --method, or for a comma-separated list of methods one `Job` per method,
    each writing into its own sub-folder ``--out/METHOD`` (a run of several methods: their
    passes are shared where they agree, `diffuseg.multi`).

    Raises:
        ValueError: naming the flag (`_method_options.parse_methods`, `_labeling.query_flags`).
    """
    import os

    from ._labeling import query_flags
    from ._method_options import parse_methods

    methods = parse_methods(args.method)
    if len(methods) == 1:
        return make_job(args, query_flags(args, methods[0]))
    return [make_job(args, query_flags(args, m, methods), os.path.join(args.out, m)) for m in methods]


def run(args: argparse.Namespace) -> int:
    """Run ``diffuseg batch``; returns the exit code."""
    from pathlib import Path

    from ..engine.inputs import resolve_inputs
    from ..engine.progress import FAILURES_FILE
    from ..engine.runner import run_batch
    from ..engine.work import OutputFullError
    from ..outputs import check_out_dir
    from ._options import fail

    try:
        options = engine_options(args)
        job = make_jobs(args)
        items = resolve_inputs(args.input, root=args.root, split=args.split, limit=args.limit)
        check_out_dir(args.out)
    except (ValueError, FileNotFoundError) as e:
        return fail("batch", message(e))
    if options is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            return fail("batch", "--engine ray needs Ray: pip install 'diffuseg[ray]'.")
        first = job[0] if isinstance(job, list) else job
        if options.address is None and first.needs_model:  # actors on this machine: find the model once, here
            from ..backbone import DEFAULT_MODEL
            from ..backbone.loading import resolve_model

            try:
                resolve_model(first.model or DEFAULT_MODEL)
            except (OSError, ValueError) as e:
                return fail("batch", message(e))
    try:
        summary = run_batch(
            job, items, engine=args.engine, ray_options=options, progress=not args.no_progress,
            overwrite=args.overwrite, wording=message,
        )  # fmt: skip
    except (ValueError, ConnectionError) as e:
        return fail("batch", message(e))
    except OutputFullError as e:
        return fail("batch", f"{e}; free some space and rerun the same command to finish", code=1)
    except OSError as e:  # a model that cannot be loaded (ModelNotFoundError ...)
        return fail("batch", message(e))
    except RuntimeError as e:  # WorkerDiedError
        return fail("batch", str(e), code=1)
    for rec in summary.failures:
        print(f"failed: {failed_name(rec)}: {rec['error']}", file=sys.stderr)
    skipped = f" ({summary.done_before} already done)" if summary.done_before else ""
    rate = f", {summary.images_per_second:.2f} img/s" if summary.segmented else ""
    listed = f"; failures listed in {Path(args.out) / FAILURES_FILE}" if summary.failures else ""
    print(
        f"{summary.total - len(summary.failures)} of {summary.total} {written_into(job, args.out)}"
        f"{skipped} [{summary.engine}{rate}]{listed}",
        file=sys.stderr,
    )
    return 1 if summary.failures else 0
