"""Core benchmarks (issue 2): recording overhead, DiffSeg post-processing, end to end.

Each figure is printed with a ratio against a baseline measured in the same run, on an
SD-1.5-shaped UNet and VAE with random weights (speed does not depend on weight values).

    ./run python benchmarks/bench_core.py [--size 512] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _configs import SD15_UNET, SD_VAE  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def current_rss_kb(field: str = "VmRSS") -> int:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process in kB. VmHWM starts
    afresh at exec, unlike getrusage's ru_maxrss, which Linux carries over from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def structured_maps(lat: int, regions: int = 8, seed: int = 0) -> dict[int, torch.Tensor]:
    """Attention-like maps with structure: tokens attend mostly within their Voronoi region
    (a random scene of `regions` parts), so merging yields a realistic number of segments."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.rand(regions, 2, generator=g)
    maps = {}
    for s in (lat, lat // 2, lat // 4, lat // 8):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
        pos = torch.stack([yy, xx], -1).reshape(-1, 2)
        region = torch.cdist(pos, seeds).argmin(1)
        same = (region[:, None] == region[None, :]).float()
        logits = 6 * same + torch.randn(s * s, s * s, generator=g)
        maps[s] = logits.softmax(-1)
    return maps


def postprocess_child(size: int, maps_file: str) -> None:
    """Run in a fresh process: time and peak RSS of aggregation + merge + labels."""
    from diffuseg.ops.attention import aggregate_self_attention
    from diffuseg.ops.clustering import merge_attention
    from diffuseg.ops.masks import maps_to_labels

    maps = torch.load(maps_file)  # made by the parent, so making them does not count here
    base_rss = current_rss_kb()
    t0 = time.perf_counter()
    agg = aggregate_self_attention(maps)
    t1 = time.perf_counter()
    proposals = merge_attention(agg, 16, (1.1, 1.1, 1.1))
    t2 = time.perf_counter()
    labels = maps_to_labels(proposals, (size, size))
    t3 = time.perf_counter()
    peak = current_rss_kb("VmHWM")
    print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f} {(peak - base_rss) / 1024:.1f} {len(torch.unique(labels))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        postprocess_child(args.size, args.child)
        return

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffuseg.backbone import record
    from diffuseg.backbone.features import Features
    from diffuseg.methods.diffseg import REQUIRES, DiffSegConfig, segment

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    vae = AutoencoderKL(**SD_VAE).eval()
    lat = args.size // 8
    latents = torch.randn(1, 4, lat, lat)
    text = torch.randn(1, 77, SD15_UNET["cross_attention_dim"])
    pixels = torch.rand(1, 3, args.size, args.size)
    print(
        f"SD-1.5-shaped UNet + VAE, random weights, {args.size}x{args.size} input, "
        f"{args.threads} threads, best of {args.repeats}"
    )

    with torch.no_grad():
        unet(latents, 300, encoder_hidden_states=text)  # warm-up
        plain = best_of(lambda: unet(latents, 300, encoder_hidden_states=text), args.repeats)

        def recorded():
            with record(unet, REQUIRES, (lat, lat)):
                unet(latents, 300, encoder_hidden_states=text)

        rec = best_of(recorded, args.repeats)
        print(
            f"(a) UNet forward: plain {plain:.2f} s, recording DiffSeg request {rec:.2f} s "
            f"-> ratio {rec / plain:.2f}x (target <= 1.3x)"
        )

        # (b) post-processing in a fresh process for a clean peak-memory reading
        with tempfile.TemporaryDirectory() as tmp:
            maps_file = os.path.join(tmp, "maps.pt")
            torch.save(structured_maps(args.size // 8), maps_file)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    maps_file,
                    "--size",
                    str(args.size),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        agg_s, merge_s, label_s, peak_mb, k = float(out[0]), float(out[1]), float(out[2]), float(out[3]), out[4]
        post = agg_s + merge_s + label_s
        print(
            f"(b) DiffSeg post-processing: aggregate {agg_s:.3f} s + merge {merge_s:.3f} s + labels "
            f"{label_s:.3f} s = {post:.3f} s (target < 1 s), peak extra memory {peak_mb:.0f} MB "
            f"(target < 1024 MB), {k} segments; = {post / plain:.3f}x of one plain UNet forward"
        )

        # (c) end to end: VAE encode + UNet (+ recording + post-processing)
        def baseline():
            z = vae.encode(pixels * 2 - 1).latent_dist.mean * 0.18215
            unet(z, 300, encoder_hidden_states=text)

        def full():
            z = vae.encode(pixels * 2 - 1).latent_dist.mean * 0.18215
            with record(unet, REQUIRES, (lat, lat)) as store:
                unet(z, 300, encoder_hidden_states=text)
            f = Features(
                self_attention=store.maps["self"],
                layer_sizes=store.sizes,
                layer_counts=store.counts["self"],
                images=pixels,
                meta=[{}],
            )
            segment(f, DiffSegConfig())

        base = best_of(baseline, args.repeats)
        e2e = best_of(full, args.repeats)
        print(
            f"(c) per {args.size} image: VAE encode + plain UNet {base:.2f} s, end-to-end DiffSeg {e2e:.2f} s "
            f"-> ratio {e2e / base:.2f}x (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
