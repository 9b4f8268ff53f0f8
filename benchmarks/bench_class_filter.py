"""Class filters on the proving ground: which of the 11 synthetic classes each held-out scene
contains, per the ``diffusion`` filter (both scores), against the ground-truth labels.

Prints per-class presence precision / recall, the micro averages, classes kept per image and
seconds per image; with --segment, DiffSegmenter's mIoU (matching none) with all 11 classes,
with each filter, and with the ground-truth labels (the oracle), through the eval runner.

    ./run python benchmarks/bench_class_filter.py --num-scenes 200 --score denoising --score attention \
        [--segment] [--out docs/class_filter_results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffuseg.eval import OutputOptions, evaluate
from diffuseg.labeling.filters import DIFFUSION_SCORES, DiffusionFilter
from diffuseg.synthetic.dataset import SyntheticScenes


def presence(backbone, dataset, flt: DiffusionFilter) -> dict:
    names = list(dataset.class_names)
    k = len(names)
    tp, fp, fn = np.zeros(k), np.zeros(k), np.zeros(k)
    kept_counts, fallbacks = [], 0
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        label = np.asarray(sample.label)
        truth = {int(c) for c in np.unique(label) if 0 <= int(c) < k}
        result = flt(backbone, sample.image, tuple((n,) for n in names), gen)
        kept = {names.index(c[0]) for c in result.kept}
        fallbacks += result.fell_back
        kept_counts.append(len(kept))
        for c in range(k):
            tp[c] += c in kept and c in truth
            fp[c] += c in kept and c not in truth
            fn[c] += c not in kept and c in truth
    seconds = (time.perf_counter() - t0) / len(dataset)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "score": flt.score,
        "per_class": {n: (float(p), float(r)) for n, p, r in zip(names, precision, recall, strict=True)},
        "precision": float(tp.sum() / max(tp.sum() + fp.sum(), 1)),
        "recall": float(tp.sum() / max(tp.sum() + fn.sum(), 1)),
        "kept_per_image": float(np.mean(kept_counts)),
        "true_per_image": float((tp + fn).sum() / len(dataset)),
        "fallbacks": fallbacks,
        "seconds_per_image": seconds,
    }


def segment_miou(backbone, dataset, method: str, classes: str, class_filter) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate(
            dataset, method, backbone=backbone, classes=classes, class_filter=class_filter, output=OutputOptions(tmp),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    return report["metrics"]["miou"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-scenes", type=int, default=200)
    ap.add_argument("--score", action="append", choices=DIFFUSION_SCORES, default=[])
    ap.add_argument(
        "--denoising-scenes", type=int, default=None, help="scenes for the (slow) denoising score (default: all)"
    )
    ap.add_argument("--segment", action="store_true", help="also DiffSegmenter's mIoU with each filter")
    ap.add_argument("--method", default="diffsegmenter")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffuseg.backbone import DiffusionBackbone

    backbone = DiffusionBackbone.from_pretrained("toy")
    dataset = SyntheticScenes("val", args.num_scenes)
    scores = args.score or list(DIFFUSION_SCORES)
    results = []
    for score in scores:
        data = dataset
        if score == "denoising" and args.denoising_scenes:
            data = SyntheticScenes("val", min(args.denoising_scenes, args.num_scenes))
        with torch.no_grad():
            r = presence(backbone, data, DiffusionFilter(score=score))
        r["num_scenes"] = len(data)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
    lines = ["Class presence on held-out synthetic scenes (toy model, 11 candidate classes).", ""]
    lines += ["| filter score | scenes | precision | recall | kept / image | true / image | fallbacks | s / image |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['score']} | {r['num_scenes']} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {r['kept_per_image']:.2f} | {r['true_per_image']:.2f} | {r['fallbacks']} "
            f"| {r['seconds_per_image']:.2f} |"
        )
    lines += ["", "| class | " + " | ".join(f"{r['score']} P / R" for r in results) + " |"]
    lines += ["|---|" + "---:|" * len(results)]
    for name in dataset.class_names:
        cells = [f"{r['per_class'][name][0]:.2f} / {r['per_class'][name][1]:.2f}" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if args.segment:
        rows = [("all 11 classes", "all", None), ("gt-labels (oracle)", "gt-labels", None)]
        rows += [(f"filter diffusion ({s})", "all", DiffusionFilter(score=s)) for s in scores]
        lines += ["", f"| {args.method} classes | mIoU (matching none) |", "|---|---:|"]
        for row, classes, flt in rows:
            with torch.no_grad():
                miou = segment_miou(backbone, dataset, args.method, classes, flt)
            print(json.dumps({"row": row, "miou": miou}), file=sys.stderr, flush=True)
            lines.append(f"| {row} | {miou:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
