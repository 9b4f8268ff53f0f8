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

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

# CLI flag -> TrainConfig field. Flags default to None: the dataclass holds the defaults.
_FIELDS = {
    "seed": int,
    "steps": int,
    "batch_size": int,
    "lr": float,
    "num_scenes": int,
    "vae_steps": int,
    "ema_decay": float,
    "checkpoint_minutes": float,
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
    pg.set_defaults(func=run)
    from .train_segdiffusion import register as register_segdiffusion

    register_segdiffusion(targets)


def _setup_logging(out: Path, filename: str = "train.log") -> None:
    """Log progress (INFO) to ``out/filename``, and to stderr unless a root handler already does."""
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger("diffuseg")
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "_diffuseg_train", False)]:
        root.removeHandler(old)
    handlers: list[logging.Handler] = [logging.FileHandler(out / filename)]
    if not logging.getLogger().handlers:  # `diffuseg.cli.main` installs one (basicConfig)
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._diffuseg_train = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def run(args: argparse.Namespace) -> int:
    """Train, resume or export; returns the exit code."""
    import torch

    from diffuseg.synthetic.checkpoint import CHECKPOINT_NAME
    from diffuseg.synthetic.export import TOY_MODEL_DIR, export_pipeline, train_proving_ground
    from diffuseg.synthetic.model import ToyModelConfig
    from diffuseg.synthetic.train import TrainConfig

    out = Path(args.out)
    if args.export_only:
        try:
            path = export_pipeline(out, args.export or TOY_MODEL_DIR)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(path)
        return 0
    if args.threads < 1:
        print(f"error: `--threads` must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.decoder_steps is not None:
        from diffuseg.synthetic.decoder import finetune_decoder

        torch.set_num_threads(args.threads)
        _setup_logging(out, "decoder.log")
        try:
            finetune_decoder(out, args.decoder_steps, seed=args.seed or 0)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if (out / CHECKPOINT_NAME).exists() and not args.resume:
        print(
            f"error: {out} already holds a run; pass --resume to continue it or choose another --out",
            file=sys.stderr,
        )
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
    _setup_logging(out)
    command = "diffuseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    train_proving_ground(config, init_from=args.init_from, command=command, steps=args.steps)
    if args.export:
        print(export_pipeline(out, args.export))
    return 0
