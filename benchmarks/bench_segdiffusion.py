"""Seg-diffusion on the proving ground: how the DDIM steps N and the ensemble size E trade
accuracy for time, through the eval runner (toy model, held-out synthetic scenes, matching
``none``, the image-level ground-truth labels as classes unless --classes all).

Each (N, E) cell is one `evaluate` run with the same generator seed; time is wall-clock per
image on this machine (CPU threads as given).

    ./run python benchmarks/bench_segdiffusion.py --grid 5x1,10x1,5x4,10x4,10x10 --num-scenes 200 \
        [--checkpoint DIR] [--classes gt-labels|all] [--out docs/segdiffusion_steps_ensemble.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffuseg.eval import OutputOptions, evaluate
from diffuseg.synthetic.dataset import SyntheticScenes


def parse_grid(text: str) -> list[tuple[int, int]]:
    """ "5x1,10x4" -> [(5, 1), (10, 4)] as (steps N, ensemble E)."""
    cells = []
    for part in text.split(","):
        n, sep, e = part.strip().partition("x")
        if not sep or not n.isdigit() or not e.isdigit() or int(n) < 1 or int(e) < 1:
            raise SystemExit(f"--grid: expected NxE items such as 10x4, got {part!r}")
        cells.append((int(n), int(e)))
    return cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="5x1,10x1,5x4,10x4,10x10", help="NxE cells (DDIM steps x ensemble size)")
    ap.add_argument("--num-scenes", type=int, default=200)
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the one shipped for toy)")
    ap.add_argument("--classes", default="gt-labels", choices=("gt-labels", "all"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="Markdown file to write (JSON beside it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffuseg.backbone import DiffusionBackbone

    backbone = DiffusionBackbone.from_pretrained("toy")
    dataset = SyntheticScenes("val", args.num_scenes)
    resources = {"checkpoint": args.checkpoint} if args.checkpoint else None
    rows = []
    for steps, ensemble in parse_grid(args.grid):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = evaluate(
                dataset, "segdiffusion", backbone=backbone, resources=resources, classes=args.classes,
                config_overrides={"steps": steps, "ensemble": ensemble}, output=OutputOptions(tmp),
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            seconds = (time.perf_counter() - t0) / max(report["dataset"]["num_evaluated"], 1)
        row = {"steps": steps, "ensemble": ensemble, "miou": report["metrics"]["miou"],
               "pixel_accuracy": report["metrics"]["pixel_accuracy"], "seconds_per_image": seconds}  # fmt: skip
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    lines = [
        f"Seg-diffusion, toy model, {args.num_scenes} held-out synthetic scenes, classes `{args.classes}`, "
        f"matching `none`, {args.threads} CPU threads; "
        f"checkpoint: {args.checkpoint or 'shipped (data/segdiffusion-toy)'}.",
        "",
        "| DDIM steps N | ensemble E | mIoU | pixel acc. | s / image |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['steps']} | {r['ensemble']} | {r['miou']:.3f} | {r['pixel_accuracy']:.3f} "
        f"| {r['seconds_per_image']:.2f} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
