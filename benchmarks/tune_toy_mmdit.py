"""Choose each method's ``toy-mmdit`` preset on the proving ground's *test* split (never on val).

An MM-DiT has one token grid, so what the UNet presets chose by level (which attention levels,
which up blocks) is chosen here by layer: for every method a grid of pass settings (timestep,
layers, blocks) and, for the unsupervised methods, of segmentation settings that re-segment the
recorded features without a second model pass (`Segmenter.configure`). Open-vocabulary methods
run through the eval runner with the ground-truth labels (``--classes gt-labels``), as their
proving-ground rows. The best entry per method is what `PRESETS["toy-mmdit"]` holds; the
held-out numbers come from ``bench_proving_ground.py --model toy-mmdit`` on the val split.

    python benchmarks/tune_toy_mmdit.py --threads 2 --out docs/toy_mmdit_tuning.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_proving_ground import resegment_scores

from diffuseg.backbone.load import load_backbone
from diffuseg.eval import OutputOptions, evaluate
from diffuseg.synthetic.dataset import SyntheticScenes

logger = logging.getLogger("tune_toy_mmdit")

SIZE = {"image_size": 128}  # the scenes' own size (the toy's native size; DiffCut's default is 1024)
LAYER_CHOICES = (None, (1, 2), (2, 3), (3, 4), (1, 2, 3, 4))
#: method -> (pass settings, segmentation settings); unsupervised, re-segmented from one pass.
UNSUPERVISED = {
    "diffseg": (
        [
            {"timestep": t, "layers": layers}
            for t in (100, 300, 500)
            for layers in (*LAYER_CHOICES, (4, 5), (5,), (3, 4, 5))
        ],
        [{"kl_thresholds": (k,) * 3} for k in (0.1, 0.2, 0.5, 1.1, 1.5, 2.0, 3.0)],
    ),
    "seg4diff": (
        [{"timestep": t, "layer": layer} for t in (300, 515, 700) for layer in range(6)],
        [{"kl_threshold": k} for k in (0.01, 0.02, 0.05, 0.1, 0.3, 1.0)],
    ),
    "diffcut": (
        [{"timestep": t, **SIZE} for t in (50, 200, 400)],
        [{"tau": tau} for tau in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)],
    ),
    "maskdiffusion-kmeans": (
        [{"timestep": t, "feature_blocks": b} for t in (0, 300, 500) for b in ((1, 2), (2, 3), (3, 4), (2,), (3,))],
        [{}],
    ),
}
#: Which parts of the toy's text axis hold the class tokens read (None: its CLIP part).
TEXT_PARTS = (("t5",), ("clip", "t5"))
#: method -> settings run through the eval runner with the ground-truth labels.
OPEN_VOCABULARY = {
    "diffsegmenter": [
        *(
            {"timestep": t, "layers": layers, "use_caption": caption}
            for t in (100, 300, 500)
            for layers in LAYER_CHOICES
            for caption in (True, False)
        ),
        *({"timestep": t, "text_encoders": parts} for t in (100, 300) for parts in TEXT_PARTS),
    ],
    "maskdiffusion": [
        *(
            {"timestep": t, "layers": layers, "feature_blocks": blocks}
            for t in (100, 300, 500)
            for layers in ((0, 1, 2, 3, 4, 5), (1, 2), (2, 3), (3, 4))
            for blocks in ((2, 3), (3, 4))
        ),
        *(
            {
                "timestep": t,
                "layers": (0, 1, 2, 3, 4, 5),
                "feature_blocks": blocks,
                **({"text_encoders": parts} if parts else {}),
            }
            for t in (100, 300)
            for parts in (None, *TEXT_PARTS)
            for blocks in ((3, 4), (3, 4, 5))
            if parts is not None or blocks != (3, 4)
        ),
    ],
}


def _key(settings: dict) -> str:
    def show(v):
        if isinstance(v, tuple):
            return (
                f"{v[0]:g}x{len(v)}"
                if len(set(v)) == 1 and len(v) == 3 and isinstance(v[0], float)
                else "-".join(map(str, v))
            )
        return "all" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    return ",".join(f"{k}={show(v)}" for k, v in settings.items() if k != "image_size")


@torch.no_grad()
def tune_unsupervised(backbone, method: str, ds: SyntheticScenes) -> dict[str, float]:
    """mIoU (per-image Hungarian matching) of every pass x segmentation entry."""
    passes, segs = UNSUPERVISED[method]
    scores = {}
    for entry in passes:
        mious = resegment_scores(backbone, method, ds, entry, segs)
        for more, miou in zip(segs, mious, strict=True):
            scores[_key({**entry, **more})] = miou
        logger.info("%s %s: %s", method, entry, [round(m, 3) for m in mious])
    return scores


def tune_open_vocabulary(backbone, method: str, ds: SyntheticScenes) -> dict[str, float]:
    """mIoU with the ground-truth labels (no matching) of every entry, through the eval runner."""
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in OPEN_VOCABULARY[method]:
            report = evaluate(
                ds, method, backbone=backbone, config_overrides=entry, classes="gt-labels",
                generator=torch.Generator().manual_seed(0), output=OutputOptions(tmp, overwrite=True),
            )  # fmt: skip
            scores[_key(entry)] = report["metrics"]["miou"]
            logger.info("%s %s: %.3f", method, entry, scores[_key(entry)])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-mmdit")
    parser.add_argument("--num-scenes", type=int, default=40)
    parser.add_argument("--methods", default=",".join([*UNSUPERVISED, *OPEN_VOCABULARY]))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="Markdown file (JSON beside it)")
    parser.add_argument("--update", action="store_true", help="keep the methods not run now from --out's JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model)
    ds = SyntheticScenes("test", args.num_scenes)
    command = "python benchmarks/tune_toy_mmdit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    previous = Path(args.out).with_suffix(".json") if args.out else None
    results = json.loads(previous.read_text()) if args.update and previous and previous.is_file() else {}
    for method in args.methods.split(","):
        t0 = time.time()
        run = tune_unsupervised if method in UNSUPERVISED else tune_open_vocabulary
        scores = run(backbone, method, ds)
        best = max(scores, key=scores.get)
        results[method] = {
            "best": best, "best_miou": scores[best], "scores": scores, "seconds": time.time() - t0,
            "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }  # fmt: skip
        logger.info("%s: best %s (%.3f)", method, best, scores[best])
    lines = [
        "# toy-mmdit presets: tuning on the test split",
        "",
        f"{args.num_scenes} scenes of "
        "`SyntheticScenes('test')`, 128 px, mIoU (unsupervised: per-image Hungarian matching; open vocabulary: "
        "the ground-truth labels, no matching). Layers are indices of the joint attention layers (0-5), blocks "
        "of the transformer blocks; `all` = every layer.",
        "",
    ]
    for method, r in results.items():
        lines += [f"## {method}", "", f"Best: `{r['best']}` ({r['best_miou']:.3f}).", ""]
        lines += [f"`{r['command']}` on {r['date']} ({r['seconds']:.0f} s).", ""]
        lines += ["| settings | mIoU |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(r["scores"].items(), key=lambda kv: -kv[1])]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
