"""``diffuseg train toy-mmdit``: train (or resume, or export) the toy diffusion transformer.

Examples::

    diffuseg train toy-mmdit --out runs/mmdit --threads 2 --export src/diffuseg/data/toy-mmdit
    diffuseg train toy-mmdit --out runs/mmdit --resume --steps 9000
    diffuseg train toy-mmdit --out runs/mmdit --export-only --export /tmp/toy-mmdit
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._options import finite_float, parse_seed
from ._runlog import setup_run_logging

__all__ = ["register", "run"]

# CLI flag -> MMDiTTrainConfig field. Flags default to None: the dataclass holds the defaults.
_FIELDS = {
    "seed": parse_seed,
    "steps": int,
    "batch_size": int,
    "lr": finite_float,
    "num_scenes": int,
    "grounding_weight": finite_float,
    "checkpoint_minutes": finite_float,
}


def register(targets: argparse._SubParsersAction) -> None:
    """Add the ``toy-mmdit`` target to ``diffuseg train``."""
    parser = targets.add_parser(
        "toy-mmdit",
        help="train the toy diffusion transformer (SD3-shaped) on synthetic scenes (CPU, resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/toy_mmdit", help="run directory (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (its stored config)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--export", default=None, metavar="DIR", help="export the EMA model here when training ends")
    parser.add_argument("--export-only", action="store_true", help="only export the checkpoint of --out to --export")
    for name, kind in _FIELDS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None,
            help=f"MMDiTTrainConfig.{name} (default: the library default)",
        )  # fmt: skip
    parser.set_defaults(func=run, resume_hint="rerun with --resume to continue from the last checkpoint")


def run(args: argparse.Namespace) -> int:
    """Train, resume or export; returns the exit code."""
    import dataclasses

    import torch

    from diffuseg.synthetic.mmdit_export import (
        TOY_MMDIT_DIR,
        build_toy_pipeline,
        export_mmdit,
        load_run_config,
        train_toy_mmdit,
    )
    from diffuseg.synthetic.mmdit_train import MMDiTState, MMDiTTrainConfig

    out = Path(args.out)
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    stored = out / "config.json"
    if (args.resume or args.export_only) and not stored.is_file():
        print(f"error: --out {out} holds no run to continue (no config.json)", file=sys.stderr)
        return 2
    if not (args.resume or args.export_only) and (out / "checkpoint.pt").exists():
        print(f"error: --out {out} already holds a run; add --resume to continue it", file=sys.stderr)
        return 2
    try:
        if args.resume or args.export_only:
            config = dataclasses.replace(load_run_config(out), **overrides)
        else:
            config = MMDiTTrainConfig(out=str(out), vae=str(TOY_MMDIT_DIR.parent / "toy" / "vae"), **overrides)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    setup_run_logging(out)
    if args.export_only:
        pipe = build_toy_pipeline(config)
        modules = {k: getattr(pipe, k) for k in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")}
        state = MMDiTState(config, modules)
        state.load()
    else:
        command = "diffuseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        pipe, state = train_toy_mmdit(config, command=command)
    if args.export or args.export_only:
        print(export_mmdit(pipe, state, args.export or TOY_MMDIT_DIR))
    return 0
