"""``diffuseg train segdiffusion --base MODEL --dataset NAME [--root PATH] --out DIR``: fine-tune a
Seg-diffusion mask UNet (resumable; checkpoints in DIR/checkpoint, the loss and validation mIoU
in DIR/log.jsonl).

Examples::

    diffuseg train segdiffusion --base toy --dataset synthetic --out runs/segdiff --steps 3000
    diffuseg train segdiffusion --base toy --dataset synthetic --out runs/segdiff --resume --steps 5000
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(targets: Any) -> None:
    """Add the ``segdiffusion`` target to ``diffuseg train``."""
    p = targets.add_parser(
        "segdiffusion",
        help="fine-tune a Seg-diffusion mask UNet from a base model (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", default="toy", help="base model: hub id, folder, or 'toy' (default: %(default)s)")
    p.add_argument("--dataset", default="synthetic", help="training data: a dataset name or 'synthetic'")
    p.add_argument("--root", default=None, help="dataset root (not for synthetic)")
    p.add_argument("--split", default="train", help="training split (default: %(default)s)")
    p.add_argument("--num-scenes", type=int, default=2000, help="synthetic training scenes (default: %(default)s)")
    p.add_argument("--val-scenes", type=int, default=50, help="synthetic validation scenes (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from ..segdiffusion.train import SegTrainConfig
    from ._method_options import add_config_options

    p.set_defaults(
        func=run,
        config_fields=add_config_options(p, SegTrainConfig, "training settings (SegTrainConfig)"),
        resume_hint="rerun with --resume to continue from the last checkpoint",
    )


def _validator(backbone: Any, num_scenes: int) -> Any:
    """mIoU on held-out synthetic scenes with their ground-truth labels as classes (fast sampler
    settings: 5 DDIM steps, 2 members)."""
    import tempfile

    import torch

    from ..eval import OutputOptions, evaluate
    from ..synthetic.dataset import SyntheticScenes

    scenes = SyntheticScenes("val", num_scenes)

    def validate(model: Any) -> float:
        overrides = {"steps": 5, "ensemble": 2}
        if "template" in model.record:
            overrides["template"] = model.record["template"]
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate(
                scenes, "segdiffusion", backbone=backbone, resources={"checkpoint": model}, classes="gt-labels",
                config_overrides=overrides, generator=torch.Generator().manual_seed(0), output=OutputOptions(tmp),
            )  # fmt: skip
        return report["metrics"]["miou"]

    return validate


#: Library arguments whose flag here is not the one `flag_message` gives them.
_OWN_FLAGS = {"model": "--base", "num_scenes": "--num-scenes", "split": "--split", "dataset": "--dataset"}


def _in_flags(error: BaseException, config_fields: list[str]) -> str:
    """A library error in this command's flags: `model` is --base, each SegTrainConfig field is
    its option, the rest as `flag_message` says them (`out` -> --out, `resume=True` -> --resume)."""
    from ._options import flag_message

    own = {**_OWN_FLAGS, **{name: "--" + name.replace("_", "-") for name in config_fields}}

    def flag(match: re.Match) -> str:
        return own.get(match.group(1), match.group(0))

    return flag_message(re.sub(r"`([a-z_][a-z0-9_]*)`", flag, str(error)))


def _check(args: argparse.Namespace, config: Any) -> None:
    """The flags the library does not see, before anything is loaded.

    Raises:
        ValueError: naming the flag.
    """
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}.")
    if args.val_scenes < 0:
        raise ValueError(f"--val-scenes must be >= 0, got {args.val_scenes}.")
    if config.validate_every and args.dataset == "synthetic" and args.val_scenes == 0:
        raise ValueError(
            f"--validate-every {config.validate_every} validates on --val-scenes held-out scenes, and --val-scenes 0 "
            "leaves none: give --val-scenes >= 1, or --validate-every 0 to train without validation."
        )


def run(args: argparse.Namespace) -> int:
    """Train or resume; returns the exit code (2 for bad flags, and for --resume with --steps
    below the step the run is at: the run cannot be brought to that step)."""
    import torch

    from ..backbone import DiffusionBackbone
    from ..segdiffusion.train import SegTrainConfig, check_out, train
    from ._method_options import config_overrides
    from ._options import fail

    overrides = config_overrides(args, args.config_fields)
    try:
        config = SegTrainConfig(**overrides)
        _check(args, config)
        done = check_out(args.out, resume=args.resume, steps=config.steps)
        if args.dataset == "synthetic":
            from ..synthetic.dataset import SyntheticScenes

            dataset = SyntheticScenes(args.split, args.num_scenes)
        else:
            from ..datasets import load_dataset

            dataset = load_dataset(args.dataset, args.root, args.split)
        from ..devices import check_device

        check_device(args.device)
        backbone = DiffusionBackbone.from_pretrained(args.base).to(args.device)
    except (ValueError, OSError) as e:  # OSError holds FileExistsError: a run in --out without --resume
        return fail("train segdiffusion", _in_flags(e, args.config_fields))
    if config.validate_every and args.dataset != "synthetic":
        print("diffuseg train segdiffusion: note: --validate-every validates on synthetic scenes only; "
              f"--dataset {args.dataset} trains without validation.", file=sys.stderr)  # fmt: skip
    torch.set_num_threads(args.threads)
    validate = _validator(backbone, args.val_scenes) if config.validate_every and args.dataset == "synthetic" else None
    try:
        records = train(backbone, dataset, config, Path(args.out), resume=args.resume, validate=validate,
                        progress=not args.no_progress)  # fmt: skip
    except ValueError as e:  # ConfigMismatchError: --resume with other settings
        return fail("train segdiffusion", _in_flags(e, args.config_fields))
    checkpoint = Path(args.out) / "checkpoint"
    if not records:  # --resume with --steps the run is at: what was asked for holds already
        print(f"the run in {args.out} is already at step {done} = --steps: no step to train (a higher --steps "
              f"trains on); checkpoint: {checkpoint}", file=sys.stderr)  # fmt: skip
        return 0
    print(f"trained to step {records[-1]['step']}; checkpoint: {checkpoint}", file=sys.stderr)
    return 0
