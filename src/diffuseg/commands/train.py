"""``diffuseg train proving-ground``: train (or resume, or export) the toy text-to-image model.

Examples::

    diffuseg train proving-ground --out runs/pg --threads 1            # train from scratch
    diffuseg train proving-ground --out runs/pg --resume --steps 20000  # continue / extend
    diffuseg train proving-ground --out runs/pg --export-only           # checkpoint -> data/toy
    diffuseg train proving-ground --init-from src/diffuseg/data/toy --out runs/pg2 --steps 5000
    diffuseg train proving-ground --out runs/pg --decoder-steps 500     # VAE decoder only
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from . import COMMANDS
from ._options import finite_float, flag_message, parse_seed
from ._runlog import setup_run_logging

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


# CLI flag -> TrainConfig field. Flags default to None: the dataclass holds the defaults.
_FIELDS = {
    "seed": parse_seed,
    "steps": int,
    "batch_size": int,
    "lr": finite_float,
    "num_scenes": int,
    "vae_steps": int,
    "ema_decay": finite_float,
    "checkpoint_minutes": finite_float,
}
# CLI flag -> ToyModelConfig field (architecture of a new run; ignored on --resume).
_MODEL_FIELDS = {
    "text_layers": int,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` with its ``proving-ground`` target."""
    parser = subparsers.add_parser("train", help=COMMANDS["train"])
    targets = parser.add_subparsers(dest="target", required=True)
    pg = targets.add_parser(
        "proving-ground",
        help="train the toy text-to-image model on synthetic scenes (CPU, resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pg.add_argument("--out", default="runs/proving_ground", help="run directory (default: %(default)s)")
    pg.add_argument("--resume", action="store_true", help="continue the run in --out")
    pg.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    pg.add_argument("--init-from", default=None, help="exported model folder to start from")
    pg.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="export the EMA model here when training ends (e.g. src/diffuseg/data/toy)",
    )
    pg.add_argument(
        "--export-only",
        action="store_true",
        help="only export the last checkpoint of --out (to --export, default data/toy)",
    )
    pg.add_argument(
        "--decoder-steps",
        type=int,
        default=None,
        help="only fine-tune the VAE decoder of --out for this many steps (encoder frozen)",
    )
    for owner, table in (("TrainConfig", _FIELDS), ("ToyModelConfig", _MODEL_FIELDS)):
        for name, kind in table.items():
            pg.add_argument(
                "--" + name.replace("_", "-"),
                type=kind,
                default=None,
                help=f"{owner}.{name} (default: the library default)",
            )
    pg.set_defaults(func=run, resume_hint="rerun with --resume to continue from the last checkpoint")
    from .train_segdiffusion import register as register_segdiffusion

    register_segdiffusion(targets)
    from .train_mmdit import register as register_mmdit

    register_mmdit(targets)


def _folder_problem(name: str | Path, argument: str) -> str | None:
    """Why `name` cannot be (or become) a folder this command writes, or None (in flags)."""
    from ..outputs import folder_problem

    problem = folder_problem(name, argument)
    return flag_message(problem) if problem else None


def _export_problem(export: str | None) -> str | None:
    """Why --export (which the export replaces) is no target, or None: a file, or a folder
    holding something other than an exported model."""
    if export is None:
        return None
    path = Path(export)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "model_index.json").exists())):
        return (
            f"--export {path} holds something other than an exported model, and the export replaces it; "
            "give a new folder or an earlier export."
        )
    return _folder_problem(export, "export")


def _done_steps(out: Path) -> int:
    """The step of the last checkpoint in `out` (0 without one).

    Raises:
        ValueError: naming --out, if the checkpoint cannot be read.
    """
    import torch

    from diffuseg.synthetic.checkpoint import CHECKPOINT_NAME

    path = out / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["step"])
    except Exception as e:  # noqa: BLE001 - a damaged file: whatever torch raises, say which
        raise ValueError(f"--out {out}: its checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None


def _steps_problem(args: argparse.Namespace, out: Path) -> str | None:
    """On --resume --steps N: why N is no step to train to (the run is past it), or None; a
    note when the run is at N already."""
    if not (args.resume and args.steps is not None):
        return None
    try:
        done = _done_steps(out)
    except ValueError as e:
        return str(e)
    if args.steps < done:
        return f"--steps {args.steps}: the run in {out} is already at step {done}; give --steps > {done} to go on"
    if args.steps == done:
        print(f"note: the run in {out} is already at step {done} = --steps: no step to train", file=sys.stderr)
    return None


def _run_problem(args: argparse.Namespace, out: Path) -> str | None:
    """Why a training run in `out` cannot start or resume as asked, or None (checked before any work)."""
    from diffuseg.synthetic.checkpoint import CHECKPOINT_NAME

    problem = _folder_problem(args.out, "out") or _export_problem(args.export)
    if problem:
        return problem
    if (out / CHECKPOINT_NAME).exists() and not args.resume:
        return f"{out} already holds a run; pass --resume to continue it or choose another --out"
    if args.resume and not (out / "config.json").exists():
        return f"--resume: {out} holds no run to continue (no config.json); leave out --resume to start one"
    if args.init_from is not None:
        init = Path(args.init_from)
        if not all((init / part / "config.json").is_file() for part in ("unet", "text_encoder", "vae")):
            return (
                f"--init-from {init} is not an exported model folder (with unet/, text_encoder/ and vae/, "
                "as --export writes)"
            )
    return None


def _export_only(args: argparse.Namespace, out: Path) -> int:
    from diffuseg.synthetic.export import TOY_MODEL_DIR, export_pipeline

    problem = _export_problem(args.export)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        path = export_pipeline(out, args.export or TOY_MODEL_DIR)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _decoder_only(args: argparse.Namespace, out: Path) -> int:
    import torch

    from diffuseg.synthetic.decoder import finetune_decoder

    problem = _folder_problem(args.out, "out")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    setup_run_logging(out, "decoder.log")
    try:
        finetune_decoder(out, args.decoder_steps, seed=args.seed or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    """Train, resume or export; returns the exit code."""
    import torch

    from diffuseg.synthetic.export import export_pipeline, train_proving_ground
    from diffuseg.synthetic.model import ToyModelConfig
    from diffuseg.synthetic.train import TrainConfig

    out = Path(args.out)
    if args.export_only:
        return _export_only(args, out)
    if args.threads < 1:
        print(f"error: `--threads` must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.decoder_steps is not None:
        return _decoder_only(args, out)
    problem = _run_problem(args, out) or _steps_problem(args, out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    known = {f.name for f in fields(TrainConfig)}
    if set(overrides) - known:  # internal invariant: the flag table matches the dataclass
        raise RuntimeError(f"unknown TrainConfig fields {set(overrides) - known}")
    model = {k: getattr(args, k) for k in _MODEL_FIELDS if getattr(args, k) is not None}
    try:
        config = TrainConfig(out=str(out), model=ToyModelConfig(**model), **overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        setup_run_logging(out)
    except OSError as err:
        print(f"error: --out {out} cannot be created: {err.strerror or err}", file=sys.stderr)
        return 2
    command = "diffuseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    train_proving_ground(config, init_from=args.init_from, command=command, steps=args.steps)
    if args.export:
        print(export_pipeline(out, args.export))
    return 0
