"""Proving-ground benchmark: every registered method's mIoU on held-out synthetic scenes.

Every row is one run of the eval runner (`diffuseg.eval.evaluate`, protocol "full": the whole
128 x 128 scene, scored at full resolution) on ``SyntheticScenes("val", N)``, scenes never seen
in training, with the toy model (or any diffusers folder):

* each method with its library defaults and the model's preset (`diffuseg env` lists them);
* DiffSeg with the paper's settings (tau 1.1, the native size), for comparison;
* ``kmeans-color`` with the true number of classes of each image (``--classes gt-labels``, K from
  the query's classes): an oracle baseline;
* DiffSegmenter with the image-level ground-truth labels (``gt-labels``, the papers' setting) and
  with all 11 classes (true open vocabulary), each with and without the scene's caption as the
  `Query` caption (the runner passes the dataset's caption; note it names the classes present);
* MaskDiffusion with ``gt-labels`` and with all classes; its k-means variant with the silhouette
  rule for K (the default) and with the reference's oracle K (the number of ground-truth labels).

Unsupervised methods and baselines are scored with per-image Hungarian matching, open-vocabulary
methods by their class names. ``--tune METHOD`` chooses settings on the *test* split (never on
val) by re-segmenting recorded features (one model pass per scene and size).

    python benchmarks/bench_proving_ground.py --num-scenes 200 --out docs/proving_ground_results.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffuseg.eval import OutputOptions, evaluate
from diffuseg.eval.metrics import MetricAccumulator, contingency
from diffuseg.methods import get_method, list_methods
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter
from diffuseg.synthetic.dataset import SyntheticScenes

logger = logging.getLogger("bench_proving_ground")

BASELINES = ("single-segment", "kmeans-color", "slic")
#: Methods that need a UNet (Seg-diffusion refuses other backbones), and rows whose settings
#: name UNet levels: left out on a diffusion transformer.
UNET_ONLY = ("segdiffusion",)
UNET_ROWS = ("maskdiffusion (paper: t 0, levels 0,1)",)

#: Extra rows: (row name, method, config overrides, eval options).
EXTRA_ROWS = (
    ("diffseg (paper: tau 1.1, native size)", "diffseg", {"kl_thresholds": (1.1, 1.1, 1.1), "image_size": None}, {}),
    (
        "segdiffusion (reference: leading DDIM timesteps)",
        "segdiffusion",
        {"timestep_spacing": "leading"},
        {"classes": "gt-labels"},
    ),
    ("diffsegmenter, all 11 classes", "diffsegmenter", {}, {"classes": "all"}),
    ("diffsegmenter, no caption", "diffsegmenter", {"use_caption": False}, {"classes": "gt-labels"}),
    ("diffsegmenter, all 11 classes, no caption", "diffsegmenter", {"use_caption": False}, {"classes": "all"}),
    (
        "diffsegmenter, all 11 classes, --filter diffusion",
        "diffsegmenter",
        {},
        {"classes": "all", "class_filter": "diffusion"},
    ),
    (
        "diffseg, segments named by cross-attention",
        "diffseg",
        {"label": "classes"},
        {"classes": "gt-labels", "matching": "none"},
    ),
    (
        "diffseg, segments named by cross-attention, all 11 classes",
        "diffseg",
        {"label": "classes"},
        {"classes": "all", "matching": "none"},
    ),
    (
        "diffseg, segments named from the scene caption's nouns",
        "diffseg",
        {"label": "caption"},
        {"matching": "none"},
    ),
    (
        "diffcut, segments named by cross-attention",
        "diffcut",
        {"label": "classes"},
        {"classes": "gt-labels", "matching": "none"},
    ),
    ("diffcut, K-way solver", "diffcut", {"solver": "kway"}, {}),
    ("diffcut, PAMR 30 iterations (the demo notebook's)", "diffcut", {"pamr_iterations": 30}, {}),
    (
        "diffcut, K-way solver, alpha 60, PAMR 30 iterations",
        "diffcut",
        {"solver": "kway", "alpha": 60.0, "pamr_iterations": 30},
        {},
    ),
    ("maskdiffusion, all 11 classes", "maskdiffusion", {}, {"classes": "all"}),
    (
        "maskdiffusion (paper: t 0, levels 0,1)",
        "maskdiffusion",
        {"timestep": 0, "attention_levels": (0, 1)},
        {"classes": "gt-labels"},
    ),
    ("maskdiffusion-kmeans (paper: t 0, native size)", "maskdiffusion-kmeans", {"timestep": 0, "image_size": None}, {}),
    (
        "maskdiffusion-kmeans (oracle K: number of ground-truth labels)",
        "maskdiffusion-kmeans",
        {"k_rule": "query-classes"},
        {"classes": "gt-labels"},
    ),
)
#: Per-method settings of the default rows: kmeans-color with K = the number of classes in the
#: ground truth; DiffSegmenter with the image-level ground-truth labels (the papers' setting).
ROW_SETTINGS = {
    "kmeans-color": ({"num_clusters": None}, {"classes": "gt-labels"}),
    "diffsegmenter": ({}, {"classes": "gt-labels"}),
    "maskdiffusion": ({}, {"classes": "gt-labels"}),
    "segdiffusion": ({}, {"classes": "gt-labels"}),
}


def evaluate_row(row: str, method: str, backbone, dataset, overrides: dict, options: dict, out_dir: Path) -> dict:
    """One row: `method` through the eval runner; returns mIoU, pixel accuracy, s / image."""
    spec = get_method(method)
    t0 = time.perf_counter()
    report = evaluate(
        dataset,
        method,
        backbone=backbone,
        config_overrides=overrides,
        protocol="full",
        output=OutputOptions(out_dir, name=row.replace(" ", "_"), overwrite=True),
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    return {
        "method": row,
        "kind": spec.kind,
        "matching": report["matching"],
        "miou": report["metrics"]["miou"],
        "pixel_accuracy": report["metrics"]["pixel_accuracy"],
        "seconds_per_image": (time.perf_counter() - t0) / max(report["dataset"]["num_evaluated"], 1),
        "config": report["method"]["config"],
        "preset": report["method"]["preset"],
        "classes": report["classes"],
        "explicit": dict(overrides),
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

#: Settings tried by ``--tune``: method -> (input sizes as multiples of the native size, grid).
TUNE_GRIDS = {
    "diffseg": ((1, 2), [{"kl_thresholds": (t,) * 3} for t in (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.1)]),
    "diffcut": ((1, 2), [{"tau": t} for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]),
    "diffcut-kway": ((2, 4), [{"alpha": a, "max_segments": m} for a in (10.0, 20.0) for m in (3, 4, 6)]),
}
#: Tuning names that are a method with fixed settings: name -> (method, settings of every entry).
TUNE_BASES = {"diffcut-kway": ("diffcut", {"solver": "kway"})}


@torch.no_grad()
def tune(backbone, method: str, native: int, num_scenes: int = 40) -> tuple[dict, dict]:
    """Settings of `method` chosen on the *test* split (never on val): every combination of an
    input size and a grid entry, each scene's features recorded once per size and re-segmented
    for every grid entry (`Segmenter.configure`). Returns the best overrides and
    {"setting@size": mIoU}."""
    ds = SyntheticScenes("test", num_scenes)
    scales, grid = TUNE_GRIDS[method]
    name, base = TUNE_BASES.get(method, (method, {}))
    scores: dict[str, float] = {}
    best, best_score = {}, -1.0
    for scale in scales:
        size = native * scale
        for overrides, miou in zip(
            grid, resegment_scores(backbone, name, ds, {**base, "image_size": size}, grid), strict=True
        ):
            key = ",".join(f"{k}={v[0] if isinstance(v, tuple) else v:g}" for k, v in overrides.items())
            scores[f"{key}@{size}"] = miou
            if miou > best_score:
                best, best_score = {**overrides, "image_size": size}, miou
    return best, scores


@torch.no_grad()
def resegment_scores(backbone, method: str, ds, pass_settings: dict, grid: list[dict]) -> list[float]:
    """mIoU on `ds` (per-image Hungarian matching) of `method` with `pass_settings` and each
    entry of `grid`: one model pass per scene, re-segmented for every entry (`Segmenter.configure`)."""
    seg = Segmenter(backbone, method, **pass_settings)
    accs = [MetricAccumulator(len(ds.class_names)) for _ in grid]
    for i in range(len(ds)):
        sample = ds[i]
        for acc, overrides in zip(accs, grid, strict=True):  # same image: no second model pass
            seg.configure(**overrides)
            result = seg(Query(image=sample.image), generator=torch.Generator().manual_seed(i))
            acc.add(contingency(result.to_input_frame(fill=-1).numpy(), sample.label, len(ds.class_names), 255))
    return [acc.result().miou for acc in accs]


#: Settings tried by ``--tune`` through the eval runner (pass settings included: one model pass
#: per scene and entry), with the method's row settings (e.g. ``gt-labels`` classes).
EVAL_TUNE_GRIDS = {
    "maskdiffusion": [
        {"timestep": t, "attention_levels": levels} for t in (0, 300) for levels in ((0, 1), (1, 2), (2,))
    ],
    "maskdiffusion-kmeans": [{"timestep": t, "image_size": size} for t in (0, 300, 500) for size in (64, 128)],
}


def tune_by_eval(backbone, method: str, num_scenes: int = 40) -> tuple[dict, dict]:
    """Settings of `method` chosen on the *test* split by running the eval runner for every entry
    of `EVAL_TUNE_GRIDS`. Returns the best overrides and {"setting": mIoU}."""
    ds = SyntheticScenes("test", num_scenes)
    overrides0, options = ROW_SETTINGS.get(method, ({}, {}))
    scores: dict[str, float] = {}
    best, best_score = {}, -1.0
    with tempfile.TemporaryDirectory() as tmp:
        for entry in EVAL_TUNE_GRIDS[method]:
            overrides = {**overrides0, **entry}
            gen = torch.Generator().manual_seed(0)
            report = evaluate(
                ds, method, backbone=backbone, config_overrides=overrides, generator=gen,
                output=OutputOptions(tmp, overwrite=True), **options,
            )  # fmt: skip
            key = ",".join(f"{k}={_show(v)}" for k, v in entry.items())
            scores[key] = miou = report["metrics"]["miou"]
            if miou > best_score:
                best, best_score = entry, miou
    return best, scores


def segmentation_figure(backbone, methods: dict[str, dict], path: str, num: int = 6) -> None:
    """Image / ground truth / one column per method (its preset) for `num` held-out scenes, as a PNG."""
    from PIL import Image, ImageDraw

    ds = SyntheticScenes("val", num)
    palette = np.random.default_rng(3).integers(40, 255, size=(256, 3), dtype=np.uint8)
    segmenters = {name: Segmenter(backbone, name, **overrides) for name, overrides in methods.items()}
    rows = []
    for i in range(num):
        sample = ds[i]
        cells = [np.asarray(sample.image), palette[sample.label]]
        present = tuple((ds.class_names[c],) for c in np.unique(sample.label))
        for seg in segmenters.values():
            query = Query(image=sample.image, classes=present, caption=sample.meta.get("caption"))
            out = seg(query, generator=torch.Generator().manual_seed(i))
            pred = out.to_input_frame(fill=0).numpy()
            if out.names:  # open vocabulary: the class colours of the ground-truth column
                lut = np.array([list(ds.class_names).index(n) for n in out.names])
                cells.append(palette[lut[pred]])
            else:
                cells.append(_PRED_COLOURS[pred % len(_PRED_COLOURS)])
        rows.append(np.concatenate(cells, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    side = ds[0].label.shape[1]
    canvas = Image.new("RGB", (grid.width, grid.height + 14), "white")
    canvas.paste(grid, (0, 14))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["scene", "labels", *segmenters]):
        draw.text((j * side + 4, 1), title, fill="black")
    canvas.save(path)


@torch.no_grad()
def attention_figure(backbone, native: int, path: str, num: int = 5, timestep: int = 100) -> None:
    """Scene / ground truth / the cross-attention map of each class word of its caption, as a PNG.

    Maps are averaged over layers and resolutions, upsampled and min-max normalised per word
    (what the probe's argmax compares); the word is written under its map.
    """
    from PIL import Image, ImageDraw

    from diffuseg.backbone.features import FeatureRequest
    from diffuseg.inspection import colorize

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


def _steps(training: Path) -> str:
    """ "N UNet steps" / "N transformer steps" from a toy model's TRAINING.json."""
    if not training.exists():
        return "? training steps"
    record = json.loads(training.read_text())
    return f"{record['unet_steps']} UNet steps" if "unet_steps" in record else f"{record['steps']} transformer steps"


def beside_table(rows: list[dict], other: dict, this_model: str) -> str:
    """Markdown: the rows of this run beside the same rows of another run (`--beside`)."""
    theirs = {r["method"]: r for r in other["rows"] if "error" not in r}
    lines = [
        f"## `{this_model}` beside `{other['info']['model']}`",
        "",
        f"Same scenes, same runner; `{other['info']['model']}` rows from `{other['info']['command']}` "
        f"on {other['info']['date']}.",
        "",
        f"| method | {this_model} mIoU | {other['info']['model']} mIoU |",
        "|---|---:|---:|",
    ]
    for r in rows:
        if "error" not in r and r["method"] in theirs:
            lines.append(f"| {r['method']} | {r['miou']:.3f} | {theirs[r['method']]['miou']:.3f} |")
    return "\n".join(lines) + "\n"


def method_of(row: dict) -> str:
    """The registered method of a result row (rows are named "method" or "method, variant")."""
    return row["method"].split(",")[0].split(" (")[0]


def _classes_cell(row: dict) -> str:
    """The class setting of a row: what each image's query was given (eval --classes)."""
    if row["classes"] == "gt-labels":
        return "gt-labels (oracle)"
    label = row.get("explicit", {}).get("label")
    if label == "caption":
        return "caption nouns"
    return "all" if row["kind"] == "open-vocabulary" or label == "classes" else "-"


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"{value[0]}x{len(value)}" if len(value) > 1 and len(set(value)) == 1 else ",".join(map(str, value))
    return "native" if value is None else str(value)


def _runs(rows: list[dict]) -> list[dict]:
    """The distinct runs that computed the rows, in order of first appearance."""
    out: list[dict] = []
    for r in rows:
        if r.get("run") and r["run"] not in out:
            out.append(r["run"])
    return out


def _runs_legend(rows: list[dict]) -> list[str]:
    runs = _runs(rows)
    if len(runs) < 2:
        return []
    lines = ["Rows come from several runs (`--update` keeps the rows of the methods a run does not name):", ""]
    lines += [f"{k}. `{run['command']}` on {run['date']}" for k, run in enumerate(runs, 1)]
    return [*lines, ""]


def to_markdown(rows: list[dict], info: dict, tuning: dict) -> str:
    lines = [
        "# Proving-ground results",
        "",
        f"Model `{info['model']}` ({info['model_steps']}), {info['num_scenes']} held-out scenes "
        f"(`SyntheticScenes('val')`, 128 x 128, {info['num_classes']} classes), through the eval runner "
        "(protocol `full`: the whole scene, scored at full resolution).",
        f"Generated by `{info['command']}` on {info['date']} ({info['threads']} CPU thread(s)).",
        "",
        *_runs_legend(rows),
        "| method | kind | classes | matching | settings | mIoU | pixel acc. | s / image |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | - | - | error: {r['error'][:80]} | | |")
            continue
        if method_of(r) == "kmeans-color" and r["config"].get("num_clusters") is None:
            settings = "K = number of query classes"
        elif r["explicit"]:
            settings = "explicit " + ", ".join(f"{k}={_show(v)}" for k, v in r["explicit"].items())
        elif r["preset"]:
            settings = "preset " + ", ".join(f"{k}={_show(v)}" for k, v in r["preset"]["overrides"].items())
        else:
            settings = "library defaults"
        run = f" [{_runs(rows).index(r['run']) + 1}]" if r.get("run") and len(_runs(rows)) > 1 else ""
        lines.append(
            f"| {r['method']}{run} | {r['kind']} | {_classes_cell(r)} | {r['matching']} | {settings} | {r['miou']:.3f} "
            f"| {r['pixel_accuracy']:.3f} | {r['seconds_per_image']:.3f} |"
        )
    lines.append("")
    for method, scores in tuning.items():
        lines.append(
            f"{method}: settings tuned on 40 scenes of the *test* split (mIoU there): "
            + ", ".join(f"{k}: {m:.3f}" for k, m in scores.items())
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def render(rows: list[dict], info: dict, tuning: dict, probes: dict | None) -> str:
    """The Markdown of a results JSON: the table, the tuning notes, the probes."""
    text = to_markdown(rows, info, tuning)
    if probes:
        text += "\n## Direct attention probes (not methods)\n\n"
        text += "| probe | mIoU | pixel acc. |\n|---|---:|---:|\n"
        for key, value in probes.items():
            if key != "timestep":
                text += f"| {key} | {value[0]:.3f} | {value[1]:.3f} |\n"
        text += f"\nTimestep {probes['timestep']}, clean latent (VAE mean), prompt = caption.\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="'toy' or a diffusers folder")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="Markdown file to write (JSON beside it)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the rows, tuning and probes of the methods not run now from --out's JSON (the previous run)",
    )
    parser.add_argument("--results", default=None, help="folder for the eval runs (default: a temp folder)")
    parser.add_argument("--probe", action="store_true", help="also run the direct attention probes")
    parser.add_argument("--probe-timestep", type=int, default=100)
    parser.add_argument("--figure", default=None, help="PNG: scenes, labels and each method's segments")
    parser.add_argument("--attention-figure", default=None, help="PNG: scenes and their words' cross-attention")
    parser.add_argument(
        "--tune",
        action="append",
        default=[],
        choices=sorted({*TUNE_GRIDS, *EVAL_TUNE_GRIDS}),
        help="tune this method's settings on the test split (repeatable); not used for the rows",
    )
    parser.add_argument("--render-only", action="store_true", help="re-write --out's Markdown from its JSON")
    parser.add_argument(
        "--beside", action="append", default=[], metavar="JSON",
        help="another model's results JSON: add a table of the rows both have, side by side (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.render_only:
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        text = render(data["rows"], data["info"], data["tuning"], data.get("probes"))
        for other in args.beside:
            text += "\n" + beside_table(data["rows"], json.loads(Path(other).read_text()), data["info"]["model"])
        Path(args.out).write_text(text)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from diffuseg.backbone.load import load_backbone
    from diffuseg.backbone.loading import resolve_model

    backbone = load_backbone(args.model)
    native = backbone.native_size
    dataset = SyntheticScenes("val", args.num_scenes)
    unet = getattr(backbone, "unet", None) is not None
    names = args.methods.split(",") if args.methods else [m for m in list_methods() if unet or m not in UNET_ONLY]
    jobs = [(n, n, *ROW_SETTINGS.get(n, ({}, {}))) for n in names]
    jobs += [job for job in EXTRA_ROWS if job[1] in names and (unet or job[0] not in UNET_ROWS)]
    rows = []
    this_run = {
        "command": "python benchmarks/bench_proving_ground.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.results or tmp)
        for row, method, overrides, options in jobs:
            try:
                with torch.no_grad():
                    result = evaluate_row(row, method, backbone, dataset, overrides, options, out_dir)
            except Exception as err:  # noqa: BLE001 - one broken method must not hide the others
                logger.exception("method %s failed", row)
                result = {"method": row, "error": f"{type(err).__name__}: {err}"}
            result["run"] = this_run
            logger.info("%s", json.dumps(result, default=str))
            rows.append(result)
    tuning = {}
    for method in args.tune:
        if method in EVAL_TUNE_GRIDS:
            best, tuning[method] = tune_by_eval(backbone, method)
        else:
            best, tuning[method] = tune(backbone, method, native)
        logger.info("tuned %s on the test split: %s", method, best)
    if args.figure:
        segmentation_figure(
            backbone,
            {n: ROW_SETTINGS.get(n, ({}, {}))[0] for n in ("diffseg", "diffcut", "kmeans-color", "diffsegmenter")},
            args.figure,
        )
    if args.attention_figure:
        attention_figure(backbone, native, args.attention_figure, timestep=args.probe_timestep)
    probes = None
    if args.probe:
        probes = probe_attention(backbone, dataset, native, args.probe_timestep)
        logger.info("probes: %s", probes)
    previous = Path(args.out).with_suffix(".json") if args.out else None
    if args.update and previous is not None and previous.is_file():
        old = json.loads(previous.read_text())
        old_run = old["info"].get("earlier") or {"date": old["info"]["date"], "command": old["info"]["command"]}
        kept = [{"run": old_run, **r} for r in old["rows"] if method_of(r) not in names]
        # the default rows (named after their method) by name, then the variants in run order
        rows = sorted(
            kept + rows, key=lambda r: (r["method"] != method_of(r), r["method"] * (r["method"] == method_of(r)))
        )
        tuning = {**{k: v for k, v in old.get("tuning", {}).items() if k not in tuning}, **tuning}
        probes = probes or old.get("probes")
        logger.info("kept %d rows of %s (run on %s)", len(kept), previous, old["info"]["date"])
        earlier = old["info"].get("earlier") or {"date": old["info"]["date"], "command": old["info"]["command"]}
    else:
        earlier = None
    training = resolve_model(args.model) / "TRAINING.json"
    info = {
        "model": args.model,
        "model_steps": _steps(training),
        "num_scenes": args.num_scenes,
        "num_classes": len(dataset.class_names),
        "native": native,
        "command": "python benchmarks/bench_proving_ground.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "earlier": earlier,
    }
    text = render(rows, info, tuning, probes)
    for other in args.beside:
        text += "\n" + beside_table(rows, json.loads(Path(other).read_text()), args.model)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"info": info, "rows": rows, "probes": probes, "tuning": tuning}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
