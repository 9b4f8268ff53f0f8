"""The web demo's re-segmentation (issue 14): a request that changes only post-processing
settings re-uses the recorded features instead of running the model.

On the shipped toy model, for each method with a model pass and a post-processing setting, over
held-out synthetic scenes: the first request for an image (a model pass) against a second one
with the setting changed (no pass), both through `DemoSession.segment`, the demo's whole
request (segmentation, the image's-frame labels, overlay, label map, legend, the label PNG and
JSON written for the downloads); the page's transport is not included. Also the model pass
alone against the method's own step, from `Segmenter`. Medians over the scenes; the first scene
of each method is a warm-up and not counted.

    ./run python benchmarks/bench_demo.py [--num-scenes 10] [--threads 2] [--out docs/demo_benchmark.md]
    ./run python benchmarks/bench_demo.py --model sd15-random --methods diffseg,diffcut --num-scenes 3

``--model sd15-random`` puts the scale of a real model behind the same requests: an SD-1.5-shaped
UNet and VAE with random weights (speed does not depend on weight values; `_configs.py`) with
the toy model's text encoder and tokenizer (the UNet's cross-attention width follows it), family
"sd1" (its presets), the scenes enlarged to 512 px.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

#: method -> (a post-processing setting as the page sends it, two values to alternate).
CHANGES = {
    "diffseg": ("kl_thresholds", ("0.08,0.08,0.08", "0.2,0.2,0.2")),
    "diffcut": ("tau", (0.5, 0.3)),
    "diffsegmenter": ("refine_iterations", (2, 0)),
    "maskdiffusion": ("background_score", (0.3, 0.5)),
    "maskdiffusion-kmeans": ("k", ("4", "6")),
    "segdiffusion": ("background_threshold", ("0.3", "0.6")),
}


def measure(session, method: str, scenes, field: str, values) -> dict[str, float]:
    from diffuseg.methods import get_method

    open_vocabulary = get_method(method).open_vocabulary  # the others run unnamed, as the paper's
    first, second = [], []
    for i, sample in enumerate(scenes):
        classes = ", ".join(sample.meta["classes_present"]) if open_vocabulary else ""
        a = session.segment(sample.image, method, {}, classes=classes, name=f"s{i}")
        b = session.segment(sample.image, method, {field: values[i % 2]}, classes=classes, name=f"s{i}")
        if not a.model_pass or b.model_pass:
            raise RuntimeError(f"{method}: expected a pass then none, got {a.model_pass}, {b.model_pass}")
        if i:
            first.append(a.seconds)
            second.append(b.seconds)
    segmenter = session._segmenters[method]
    query_classes = tuple((c,) for c in scenes[0].meta["classes_present"]) if open_vocabulary else ()
    from diffuseg.plan import Query

    passes, steps = [], []
    for sample in scenes[1:]:
        query = Query(image=sample.image, classes=query_classes)
        t0 = time.perf_counter()
        segmenter.features(query, generator=torch.Generator().manual_seed(0), refresh=True)
        t1 = time.perf_counter()
        segmenter.segment_batch([query], generator=torch.Generator().manual_seed(0))
        t2 = time.perf_counter()
        passes.append(t1 - t0)
        steps.append(t2 - t1)  # the cache holds this query's features: the method's step alone
    return {
        "first": statistics.median(first),
        "second": statistics.median(second),
        "pass": statistics.median(passes),
        "step": statistics.median(steps),
    }


def sd15_random():
    """An SD-1.5-shaped backbone with random UNet and VAE weights (see the module doc)."""
    import os

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffuseg.backbone import DiffusionBackbone

    sys.path.insert(0, os.path.dirname(__file__))
    from _configs import SD15_UNET, SD_VAE

    toy = DiffusionBackbone.from_pretrained("toy")
    width = toy.text_encoder.config.hidden_size
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "cross_attention_dim": width})
    vae = AutoencoderKL(**SD_VAE)
    return DiffusionBackbone(
        unet, vae, toy.text_encoder, toy.tokenizer, toy.scheduler, name="sd15-random", family="sd1"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-scenes", type=int, default=10, help="val scenes per method (default 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(CHANGES), help="comma-separated (default all)")
    parser.add_argument("--model", default="toy", choices=("toy", "sd15-random"))
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffuseg.backbone import DiffusionBackbone
    from diffuseg.demo.session import DemoSession
    from diffuseg.synthetic import SyntheticScenes

    scenes = [SyntheticScenes("val", args.num_scenes)[i] for i in range(args.num_scenes)]
    load = lambda: DiffusionBackbone.from_pretrained("toy")  # noqa: E731
    if args.model == "sd15-random":
        load = sd15_random
        for sample in scenes:
            sample.image = sample.image.resize((512, 512))
    session = DemoSession(load, args.model, work_dir=tempfile.mkdtemp())
    if not session.load_model():
        print(session.load_error, file=sys.stderr)
        return 1
    rows = []
    for method in args.methods.split(","):
        field, values = CHANGES[method]
        r = measure(session, method, scenes, field, values)
        rows.append(
            f"| {method} | {field} | {r['first']:.3f} | {r['second']:.3f} | **{r['first'] / r['second']:.1f}x** "
            f"| {r['pass']:.3f} | {r['step']:.3f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| method | setting changed | first request, s | second request, s | first / second "
            "| model pass, s | method step, s |",
            "|---|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    text = (
        f"## {args.model}\n\n"
        f"Model {args.model}, {args.num_scenes - 1} held-out synthetic scenes "
        f"({'512' if args.model == 'sd15-random' else '128'} px) after one warm-up, "
        f"{args.threads} CPU threads, medians. A request is `DemoSession.segment`: the demo's whole "
        "request without the page's transport. The second request changes only the named setting, "
        "so no model pass runs. Printed by:\n\n"
        f"    python benchmarks/bench_demo.py --model {args.model} --methods {args.methods} "
        f"--num-scenes {args.num_scenes} --threads {args.threads}\n\n"
        f"{table}\n"
    )
    print(text)
    if args.out:
        title = "# Web demo: re-segmentation from cached features (`benchmarks/bench_demo.py`)\n\n"
        with open(args.out, "a" if args.append else "w") as f:
            f.write(("\n" if args.append else title) + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
