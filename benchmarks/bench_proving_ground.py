"""Proving-ground benchmark: every registered method's mIoU on held-out synthetic scenes.

Runs each method of `diffuseg.methods.list_methods()` on the toy model (or any diffusers folder)
over ``SyntheticScenes("val", N)`` (128 x 128 scenes never seen in training) and scores:

* unsupervised methods and baselines: Hungarian matching per image (DiffSeg / DiffCut protocol);
* open-vocabulary methods: the method names its segments from the dataset's class names, and
  names are scored directly (no matching).

Model-based methods run at the model's native size (UNet sample size x VAE factor: 64 for the
toy model); their labels are mapped back onto the 128-pixel label map. ``kmeans-color`` gets the
true number of classes of each image (an oracle K), ``slic`` and ``single-segment`` run with
their defaults on the full-size image.

    python benchmarks/bench_proving_ground.py --num-scenes 200 --out docs/proving_ground_results.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffuseg.eval.metrics import MetricAccumulator, contingency
from diffuseg.methods import get_method, list_methods
from diffuseg.segmenter import Segmenter
from diffuseg.synthetic.dataset import SyntheticScenes

logger = logging.getLogger("bench_proving_ground")

#: Config fields through which an open-vocabulary method may receive the class names.
_VOCAB_FIELDS = ("class_names", "classes", "vocabulary", "labels")


def _overrides(spec, native: int, class_names: tuple[str, ...], caption_prompt: bool) -> dict:
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    out: dict = {}
    needs_model = not spec.request_for(None).is_empty if not callable(spec.requires) else True
    if "image_size" in fields and needs_model:
        out["image_size"] = native
    if "resize_mode" in fields:
        out["resize_mode"] = "squash"
    if spec.open_vocabulary:
        for name in _VOCAB_FIELDS:
            if name in fields:
                out[name] = tuple(class_names)
                break
    return out


def _names_lut(seg, class_names) -> np.ndarray | None:
    if not seg.names:
        return None
    index = {n.strip().lower(): i for i, n in enumerate(class_names)}
    return np.array([index.get(str(n).strip().lower(), -1) for n in seg.names], dtype=np.int64)


def evaluate_method(
    name: str,
    backbone,
    dataset: SyntheticScenes,
    native: int,
    caption_prompt: bool,
    generator_seed: int = 0,
    kl: tuple[float, ...] | None = None,
    size: int | None = None,
) -> dict:
    """Score one method; returns {'miou', 'pixel_accuracy', 'seconds_per_image', ...}.

    `kl` overrides DiffSeg's `kl_thresholds` and `size` its input size (the row is then named
    ``diffseg (tau=..., N px, tuned)``).
    """
    spec = get_method(name)
    overrides = _overrides(spec, native, dataset.class_names, caption_prompt)
    if kl is not None:
        overrides["kl_thresholds"] = kl
    if size is not None:
        overrides["image_size"] = size
    seg = Segmenter(backbone, name, **overrides)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    matching = "none" if spec.open_vocabulary else "hungarian-per-image"
    acc = MetricAccumulator(len(dataset.class_names), matching)
    gen = torch.Generator().manual_seed(generator_seed)
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        per_image = {}
        if "num_clusters" in fields and name == "kmeans-color":
            per_image["num_clusters"] = len(np.unique(sample.label))  # oracle K
        if caption_prompt and "prompt" in fields:
            per_image["prompt"] = sample.meta["caption"]
        if per_image:
            seg.configure(**per_image)
        result = seg(sample.image, generator=gen)
        pred = result.to_input_frame(fill=-1).cpu().numpy()
        if matching == "none":
            lut = _names_lut(result, dataset.class_names)
            if lut is not None:
                pred = np.where(pred >= 0, lut[np.clip(pred, 0, len(lut) - 1)], -1)
        acc.add(contingency(pred, sample.label, len(dataset.class_names), 255))
    seconds = time.perf_counter() - t0
    scores = acc.result()
    return {
        "method": name if kl is None else f"{name} (tau={kl[0]:g}, {overrides['image_size']} px, tuned)",
        "matching": matching,
        "miou": scores.miou,
        "pixel_accuracy": scores.pixel_accuracy,
        "seconds_per_image": seconds / len(dataset),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "open_vocabulary": spec.open_vocabulary,
    }


# --------------------------------------------------------------------------- direct probes


def _kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 30) -> torch.Tensor:
    """Plain k-means (k-means++ seeding) on rows of x (N, D); returns (N,) int64 labels."""
    centres = [x[torch.randint(0, len(x), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        centres.append(x[torch.multinomial(d / d.sum().clamp_min(1e-12), 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(dim=1)
        new = torch.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return torch.cdist(x, c).argmin(dim=1)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise the last axis of x (..., N) to [0, 1] (constant rows become 0)."""
    lo, hi = x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _word_maps(feats, size: tuple[int, int]) -> torch.Tensor:
    """Cross-attention of every token of image 0, summed over resolutions: (T, H, W) float32.

    Each resolution's layer mean is upsampled bilinearly to `size` first.
    """
    total = None
    for (h, w), m in feats.by_resolution("cross").items():  # m: (1, h*w, T)
        maps = m[0].T.reshape(-1, 1, h, w)  # (T, 1, h, w)
        up = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
        total = up if total is None else total + up
    return total


@torch.no_grad()
def probe_attention(backbone, dataset: SyntheticScenes, native: int, timestep: int = 100) -> dict:
    """Model-level checks that need no method: how much the attention knows.

    * ``self-attn k-means (true K)``: the aggregated self-attention rows (DiffSeg's
      aggregation, one (h*w)-dim row per latent token) clustered by k-means with the true number
      of classes; Hungarian per image. Isolates "is self-attention meaningful" from DiffSeg's
      KL-merge thresholds.
    * ``cross-attn argmax (caption words)``: prompt = the caption; every pixel takes the class
      whose caption word gets the most cross-attention (maps averaged over layers, upsampled,
      min-max normalised per word); scored by name (no matching). Isolates "does the class token
      look at its object".
    * ``cross-attn refined by self-attn``: as DiffSegmenter (arXiv 2309.02773): each word's
      cross-attention, min-max normalised per resolution and summed at the finest self-attention
      grid, is propagated once along the self-attention rows (``A_self @ c``), then argmax as above.
    """
    from diffuseg.backbone.features import FeatureRequest
    from diffuseg.ops.attention import aggregate_self_attention

    request = FeatureRequest(self_attention=True, cross_attention=True)
    c = len(dataset.class_names)
    acc_self = MetricAccumulator(c, "hungarian-per-image")
    acc_cross = MetricAccumulator(c, "none")
    acc_refined = MetricAccumulator(c, "none")
    gen = torch.Generator().manual_seed(0)
    for i in range(len(dataset)):
        sample = dataset[i]
        label = sample.label
        feats = backbone.extract(
            [sample.image],
            request,
            prompts=sample.meta["caption"],
            timestep=timestep,
            image_size=native,
            resize_mode="squash",
        )
        big = aggregate_self_attention(feats.by_resolution("self"))  # (R*R, R, R)
        r = big.shape[-1]
        k = len(np.unique(label))
        rows = big.reshape(r * r, r * r)
        lab = _kmeans(rows, k, gen).reshape(1, 1, r, r).float()
        pred = torch.nn.functional.interpolate(lab, size=label.shape, mode="nearest")[0, 0].long()
        acc_self.add(contingency(pred.numpy(), label, c, 255))

        tokens = feats.tokens[0]
        present = [n for n in dataset.class_names if n in sample.meta["caption"].split()]
        cross = feats.by_resolution("cross")
        selfs = feats.by_resolution("self")
        fine = max(selfs, key=lambda hw: hw[0] * hw[1])  # finest self-attention grid (h, w)
        a_fine = selfs[fine].reshape(fine[0] * fine[1], fine[0] * fine[1])  # rows sum to 1
        total = _word_maps(feats, label.shape)
        coarse = None
        for (h, w), m in cross.items():  # m: (1, h*w, T)
            maps = m[0].T.reshape(-1, 1, h, w)  # (T, 1, h, w)
            at_fine = torch.nn.functional.interpolate(maps, size=fine, mode="bilinear", align_corners=False)[:, 0]
            at_fine = _minmax(at_fine.flatten(1)).reshape(at_fine.shape)  # per token, per resolution
            coarse = at_fine if coarse is None else coarse + at_fine
        # DiffSegmenter-style refinement: propagate each token's map along self-attention rows.
        refined = (a_fine @ coarse.flatten(1).T).T.reshape(-1, 1, *fine)  # (T, 1, h, w)
        refined = torch.nn.functional.interpolate(refined, size=label.shape, mode="bilinear", align_corners=False)
        for maps, acc in ((total, acc_cross), (refined[:, 0], acc_refined)):
            scores, ids = [], []
            for name in present:
                pos = [j for j, t in enumerate(tokens) if t.replace("</w>", "") == name]
                if pos:
                    # per-token min-max normalisation (as the open-vocabulary methods do): tokens
                    # differ in how much attention they catch overall, not only in where.
                    m = maps[pos].mean(0)  # (H, W)
                    scores.append(_minmax(m.flatten()).reshape(m.shape))
                    ids.append(dataset.class_names.index(name))
            if scores:
                pred = np.asarray(ids)[torch.stack(scores).argmax(0).numpy()]
                acc.add(contingency(pred, label, c, 255))
    s, x, r = acc_self.result(), acc_cross.result(), acc_refined.result()
    return {
        "self-attn k-means (true K)": (s.miou, s.pixel_accuracy),
        "cross-attn argmax (caption words)": (x.miou, x.pixel_accuracy),
        "cross-attn refined by self-attn, argmax (caption words)": (r.miou, r.pixel_accuracy),
        "timestep": timestep,
    }


#: High-contrast colours for predicted segment ids (ids carry no class, only identity).
_PRED_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190], [0, 128, 128], [170, 110, 40]],
    dtype=np.uint8,
)  # fmt: skip

KL_CANDIDATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.1)


@torch.no_grad()
def tune_diffseg(
    backbone, native: int, num_scenes: int = 40, candidates=KL_CANDIDATES, scales=(1, 2)
) -> tuple[tuple[float, int], dict]:
    """DiffSeg's KL threshold tau and input size chosen on the *test* split (never on val).

    DiffSeg's published tau (1.1 for COCO-Stuff, 0.9 for Cityscapes) is tuned per dataset for
    SD's 64x64 maps; the toy model's 16x16 maps are flatter, so the scale of tau differs. The
    input size is tried at the native size and at multiples of it (`scales`): like SD, the
    toy model runs at other sizes, and larger inputs give finer attention grids.
    Returns the best (tau, size) and {"tau@size": mIoU}.
    """
    ds = SyntheticScenes("test", num_scenes)
    scores: dict[str, float] = {}
    best, best_score = (candidates[0], native), -1.0
    for scale in scales:
        size = native * scale
        seg = Segmenter(backbone, "diffseg", image_size=size, resize_mode="squash")
        accs = {t: MetricAccumulator(len(ds.class_names)) for t in candidates}
        for i in range(len(ds)):
            sample = ds[i]
            for t in candidates:  # same image: the recorded features are re-used (one UNet pass)
                seg.configure(kl_thresholds=(t,) * 3)
                pred = seg(sample.image).to_input_frame(fill=-1).cpu().numpy()
                accs[t].add(contingency(pred, sample.label, len(ds.class_names), 255))
        for t in candidates:
            scores[f"{t:g}@{size}"] = miou = accs[t].result().miou
            if miou > best_score:
                best, best_score = (t, size), miou
    return best, scores


def segmentation_figure(backbone, native: int, methods: dict[str, dict], path: str, num: int = 6) -> None:
    """Image / ground truth / one column per method for `num` held-out scenes, as a PNG."""
    from PIL import Image

    ds = SyntheticScenes("val", num)
    palette = np.random.default_rng(3).integers(40, 255, size=(256, 3), dtype=np.uint8)
    rows = []
    for i in range(num):
        sample = ds[i]
        cells = [np.asarray(sample.image), palette[sample.label]]
        for name, overrides in methods.items():
            seg = Segmenter(backbone, name, **overrides)
            if name == "kmeans-color":
                seg.configure(num_clusters=len(np.unique(sample.label)))
            pred = seg(sample.image).to_input_frame(fill=0).numpy()
            cells.append(_PRED_COLOURS[pred % len(_PRED_COLOURS)])
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


@torch.no_grad()
def attention_figure(backbone, native: int, path: str, num: int = 5, timestep: int = 100) -> None:
    """Scene / ground truth / the cross-attention map of each class word of its caption, as a PNG.

    Maps are averaged over layers and resolutions, upsampled and min-max normalised per word
    (what the probe's argmax compares); the word is written under its map.
    """
    from PIL import Image, ImageDraw

    from diffuseg.backbone.features import FeatureRequest
    from diffuseg.commands.inspect import colorize

    ds = SyntheticScenes("val", num)
    palette = np.random.default_rng(3).integers(40, 255, size=(256, 3), dtype=np.uint8)
    max_words = 5
    rows = []
    for i in range(num):
        sample = ds[i]
        size = sample.label.shape
        feats = backbone.extract(
            [sample.image],
            FeatureRequest(cross_attention=True),
            prompts=sample.meta["caption"],
            timestep=timestep,
            image_size=native,
            resize_mode="squash",
        )
        total = _word_maps(feats, size)
        tokens = [t.replace("</w>", "") for t in feats.tokens[0]]
        words = [w for w in dict.fromkeys(sample.meta["caption"].split()) if w in ds.class_names][:max_words]
        cells = [np.asarray(sample.image), palette[sample.label]]
        titles = ["scene", "labels"]
        for word in words:
            m = total[[j for j, t in enumerate(tokens) if t == word]].mean(0)
            cells.append(colorize(_minmax(m.flatten()).reshape(m.shape).numpy()))
            titles.append(word)
        while len(cells) < max_words + 2:
            cells.append(np.full_like(cells[0], 255))
            titles.append("")
        strip = Image.fromarray(np.concatenate(cells, axis=1))
        canvas = Image.new("RGB", (strip.width, strip.height + 14), "white")
        canvas.paste(strip, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for j, title in enumerate(titles):
            draw.text((j * size[1] + 4, strip.height + 1), title, fill="black")
        rows.append(np.asarray(canvas))
        logger.info("attention figure: %s", sample.meta["caption"])
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def to_markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# Proving-ground results",
        "",
        f"Model `{info['model']}` ({info['model_steps']} UNet steps), "
        f"{info['num_scenes']} held-out scenes (`SyntheticScenes('val')`, 128 x 128, "
        f"{info['num_classes']} classes), model input {info['native']} px.",
        f"Generated by `{info['command']}` on {info['date']} ({info['threads']} CPU thread(s)).",
        "",
        "| method | kind | matching | mIoU | pixel acc. | s / image |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | error: {r['error'][:80]} | | |")
            continue
        kind = (
            "open-vocabulary" if r["open_vocabulary"] else ("baseline" if r["method"] in BASELINES else "unsupervised")
        )
        lines.append(
            f"| {r['method']} | {kind} | {r['matching']} | {r['miou']:.3f} "
            f"| {r['pixel_accuracy']:.3f} "
            f"| {r['seconds_per_image']:.3f} |"
        )
    lines += ["", "`kmeans-color` uses the true number of classes per image (oracle K).", ""]
    return "\n".join(lines)


BASELINES = ("single-segment", "kmeans-color", "slic")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a diffusers folder")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    parser.add_argument(
        "--caption-prompt",
        action="store_true",
        help="give methods with a `prompt` field the caption",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="Markdown file to write (JSON beside it)")
    parser.add_argument("--probe", action="store_true", help="also run the direct attention probes")
    parser.add_argument("--probe-timestep", type=int, default=100)
    parser.add_argument("--figure", default=None, help="PNG: scenes, labels, diffseg, kmeans-color")
    parser.add_argument("--attention-figure", default=None, help="PNG: scenes and their words' cross-attention")
    parser.add_argument("--diffseg-kl", type=float, default=None, help="also score diffseg with this KL threshold")
    parser.add_argument("--diffseg-size", type=int, default=None, help="input size of that extra diffseg row")
    parser.add_argument(
        "--tune-kl",
        action="store_true",
        help="choose --diffseg-kl and --diffseg-size on 40 scenes of the test split",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from diffuseg.backbone.backbone import DiffusionBackbone
    from diffuseg.backbone.loading import resolve_model

    backbone = DiffusionBackbone.from_pretrained(args.model)
    native = backbone.unet.config.sample_size * backbone.vae_scale_factor
    dataset = SyntheticScenes("val", args.num_scenes)
    names = args.methods.split(",") if args.methods else list_methods()
    rows = []
    for name in names:
        try:
            with torch.no_grad():
                row = evaluate_method(name, backbone, dataset, native, args.caption_prompt)
        except Exception as err:  # noqa: BLE001 - one broken method must not hide the others
            logger.exception("method %s failed", name)
            row = {"method": name, "error": f"{type(err).__name__}: {err}"}
        logger.info("%s", json.dumps(row))
        rows.append(row)
    tuning = None
    if args.tune_kl:
        (args.diffseg_kl, args.diffseg_size), tuning = tune_diffseg(backbone, native)
        logger.info("tuned on the test split: %s -> %s, %s px", tuning, args.diffseg_kl, args.diffseg_size)
    if args.diffseg_kl is not None:
        tau = (args.diffseg_kl,) * 3
        with torch.no_grad():
            row = evaluate_method(
                "diffseg", backbone, dataset, native, args.caption_prompt, kl=tau, size=args.diffseg_size
            )
        logger.info("%s", json.dumps(row))
        rows.append(row)
    if args.figure:
        kl = {} if args.diffseg_kl is None else {"kl_thresholds": (args.diffseg_kl,) * 3}
        size = args.diffseg_size or native
        segmentation_figure(
            backbone,
            native,
            {"diffseg": {"image_size": size, "resize_mode": "squash", **kl}, "kmeans-color": {}},
            args.figure,
        )
    if args.attention_figure:
        attention_figure(backbone, native, args.attention_figure, timestep=args.probe_timestep)
    probes = None
    if args.probe:
        probes = probe_attention(backbone, dataset, native, args.probe_timestep)
        logger.info("probes: %s", probes)
    training = resolve_model(args.model) / "TRAINING.json"
    info = {
        "model": args.model,
        "model_steps": json.loads(training.read_text())["unet_steps"] if training.exists() else "?",
        "num_scenes": args.num_scenes,
        "num_classes": len(dataset.class_names),
        "native": native,
        "command": "python benchmarks/bench_proving_ground.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
    }
    text = to_markdown(rows, info)
    if tuning:
        text += "\nDiffSeg's tau and input size tuned on 40 scenes of the *test* split (mIoU there, tau@px): "
        text += ", ".join(f"{k}: {m:.3f}" for k, m in tuning.items()) + ".\n"
    if probes:
        text += "\n## Direct attention probes (not methods)\n\n"
        text += "| probe | mIoU | pixel acc. |\n|---|---:|---:|\n"
        for key, value in probes.items():
            if key != "timestep":
                text += f"| {key} | {value[0]:.3f} | {value[1]:.3f} |\n"
        text += f"\nTimestep {probes['timestep']}, clean latent (VAE mean), prompt = caption.\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"info": info, "rows": rows, "probes": probes, "kl_tuning": tuning}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
