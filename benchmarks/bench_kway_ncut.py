"""The cut alone: DiffCut's recursive two-way solver against the K-way solver, same affinities.

Two sets of graphs, each solved by both solvers (`recursive_ncut_affinity` with tau,
`kway_ncut_affinity` with the eigengap rule), one warm-up per set, median and mean milliseconds:

* ``toy``: DiffCut's affinity (alpha 10) of the toy model's features of held-out scenes
  (`SyntheticScenes("val")`) at the toy preset's 128 px (8 x 8 tokens) and at 256 px (16 x 16);
* ``synthetic``: clustered random features (C = 128, 6 clusters, noise 0.6, alpha 10) at
  N = 1024 and 2304 tokens (SD-1.x / SSD-1B feature grids at 512 / 768 px and 1024 px).

Also printed: the mean NCut of each solver's partition (K-way objective) and the mean number of
segments. ``--end-to-end N`` also times whole DiffCut segmentations (model pass, cut, assignment,
PAMR) of N val scenes at the toy preset, the two solvers alternating scene by scene (each with
its own `Segmenter`, so each runs the model once per scene): a busy machine slows both alike.

    python benchmarks/bench_kway_ncut.py --scenes 20 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from diffuseg.ops.kway_ncut import kway_ncut_affinity, ncut_value
from diffuseg.ops.ncut import affinity_matrix, recursive_ncut_affinity


def toy_affinities(num_scenes: int, size: int) -> list[torch.Tensor]:
    """DiffCut's affinities (N, N) of the toy model's features of `num_scenes` val scenes."""
    from diffuseg.backbone.load import load_backbone
    from diffuseg.methods import diffcut
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter
    from diffuseg.synthetic.dataset import SyntheticScenes

    seg = Segmenter(load_backbone("toy"), "diffcut", image_size=size)
    out = []
    for i, sample in enumerate(SyntheticScenes("val", num_scenes)):
        feats = diffcut.token_features(seg.features(Query(image=sample.image), torch.Generator().manual_seed(i)))
        c, h, w = feats.shape
        out.append(affinity_matrix(feats.reshape(c, h * w), 10.0))
    return out


def synthetic_affinities(n: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        centres = torch.randn(6, 128, generator=g)
        feats = centres[torch.randint(0, 6, (n,), generator=g)] + 0.6 * torch.randn(n, 128, generator=g)
        out.append(affinity_matrix(feats.T, 10.0))
    return out


def compare(name: str, graphs: list[torch.Tensor], tau: float) -> None:
    solvers = {
        "recursive": lambda a: recursive_ncut_affinity(a, tau),
        "kway": lambda a: kway_ncut_affinity(a, max_segments=8),
    }
    for solver, fn in solvers.items():
        fn(graphs[0])  # warm-up
        times, cuts, ks = [], [], []
        for a in graphs:
            t0 = time.perf_counter()
            labels = fn(a)
            times.append(time.perf_counter() - t0)
            cuts.append(ncut_value(a, labels))
            ks.append(int(labels.max()) + 1)
        print(
            f"| {name} | {solver} | {len(graphs)} | {statistics.median(times) * 1e3:.1f} "
            f"| {statistics.mean(times) * 1e3:.1f} | {statistics.mean(ks):.1f} | {statistics.mean(cuts):.3f} |",
            flush=True,
        )


#: The settings timed end to end: the toy preset with each solver, and both with the proving
#: ground's K-way row settings (alpha 60, 30 PAMR iterations; the recursive solver with the same PAMR).
END_TO_END = {
    "recursive": {"solver": "recursive"},
    "kway": {"solver": "kway"},
    "recursive, PAMR 30": {"solver": "recursive", "pamr_iterations": 30},
    "kway, alpha 60, PAMR 30": {"solver": "kway", "alpha": 60.0, "pamr_iterations": 30},
}


def end_to_end(num_scenes: int) -> None:
    """Seconds per image of DiffCut with each solver on the toy model, interleaved per scene."""
    from diffuseg.backbone.load import load_backbone
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter
    from diffuseg.synthetic.dataset import SyntheticScenes

    backbone = load_backbone("toy")
    segmenters = {name: Segmenter(backbone, "diffcut", **settings) for name, settings in END_TO_END.items()}
    times: dict[str, list[float]] = {s: [] for s in segmenters}
    for i, sample in enumerate(SyntheticScenes("val", num_scenes + 1)):
        for solver, seg in segmenters.items():
            t0 = time.perf_counter()
            seg(Query(image=sample.image), generator=torch.Generator().manual_seed(i))
            if i > 0:  # scene 0 warms up
                times[solver].append(time.perf_counter() - t0)
    for solver, t in times.items():
        median, mean = statistics.median(t) * 1e3, statistics.mean(t) * 1e3
        print(f"| DiffCut end to end | {solver} | {len(t)} | {median:.1f} | {mean:.1f} | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="only the toy graphs")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N", help="also time N whole segmentations")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| graphs | solver | count | median ms | mean ms | mean K | mean NCut |\n|---|---|---:|---:|---:|---:|---:|")
    for size in (128, 256):
        compare(f"toy {size} px ({(size // 16) ** 2} tokens)", toy_affinities(args.scenes, size), 0.4)
    if not args.skip_large:
        for n in (1024, 2304):
            compare(f"synthetic N={n}", synthetic_affinities(n, 3), 0.5)
    if args.end_to_end:
        end_to_end(args.end_to_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
