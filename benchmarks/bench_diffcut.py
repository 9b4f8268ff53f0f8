"""DiffCut benchmarks: early-exit feature extraction, recursive NCut, PAMR.

Each section prints its figures and the ratio against a baseline measured in the same run:

1. Feature extraction on an SSD-1B-shaped UNet with random weights (built from a config dict,
   no download): DiffCut's request with early exit (the UNet stops after the hooked `attn1`)
   vs a full UNet forward. Target: <= 0.6x. Default input 1024 px (the reference's), about
   1 min per full pass on 2 CPU cores and 6 GB of RAM; --image-size 512 for a quicker run,
   --device cuda on a GPU.
2. Recursive normalized cut on 32x32 and 64x64 token grids of 1280-dim clustered features
   (target < 0.5 s at 32x32), vs a per-threshold loop baseline with dense degree matrices
   (the shape of the reference's `get_bipartition` / `second_smallest_eigenvector`).
3. PAMR at 512x512 (10 iterations, dilations 1,2,4,8) vs the convolution formulation of the
   reference (`tools/pamr.py`: one dilated 3x3 conv per dilation and step).

Run:  python benchmarks/bench_diffcut.py [--threads 1] [--image-size 1024] [--skip-unet | --only-unet]
                                        [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def _threads_from_argv() -> None:
    """Apply --threads to every BLAS/OpenMP pool before numpy, scipy and torch load them.

    On a small shared machine the default pools (one thread per core in torch's MKL/OpenMP
    and again in scipy's OpenBLAS) oversubscribe the cores and spin; timings of dense linear
    algebra then vary by 10-100x from run to run. --threads 1 gives stable figures.
    """
    if "--threads" in sys.argv[:-1]:
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = n


_threads_from_argv()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffuseg.backbone.layers import unet_layer_map  # noqa: E402
from diffuseg.backbone.recorder import EarlyExit, record  # noqa: E402
from diffuseg.methods.diffcut import requires  # noqa: E402
from diffuseg.ops import ncut  # noqa: E402
from diffuseg.ops.fiedler import fiedler_vector  # noqa: E402
from diffuseg.ops.pamr import pamr  # noqa: E402

# SSD-1B's UNet (segmind/SSD-1B unet/config.json, as diffusers >= 0.22 loads it): the SDXL
# layout with 1/2/4 transformer layers in the down blocks, a mid block without attention and
# per-layer depths in the up blocks. Verify against the hub config before quoting absolutes.
SSD1B_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    transformer_layers_per_block=(1, 2, 4),
    reverse_transformer_layers_per_block=((4, 4, 10), (2, 1, 1), (1, 1, 1)),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------------------------- UNet
def bench_unet(image_size: int, device: str, repeats: int) -> None:
    from diffusers import UNet2DConditionModel

    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**SSD1B_UNET).eval().to(device)
    params = sum(p.numel() for p in unet.parameters()) / 1e9
    print(f"[unet] SSD-1B-shaped UNet, {params:.2f} B params, built in {time.perf_counter() - t0:.0f} s")
    side = image_size // 8  # SDXL VAE factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, side, side, generator=g).to(device)
    text = torch.randn(1, 77, SSD1B_UNET["cross_attention_dim"], generator=g).to(device)
    pooled = torch.randn(1, 1280, generator=g).to(device)
    time_ids = torch.tensor([[image_size, image_size, 0, 0, image_size, image_size]], dtype=torch.float32)
    cond = {"text_embeds": pooled, "time_ids": time_ids.to(device)}
    t = torch.tensor([50], device=device)
    request = requires(unet_layer_map(unet))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def full() -> None:
        unet(latents, t, encoder_hidden_states=text, added_cond_kwargs=cond)
        sync()

    @torch.no_grad()
    def early() -> None:
        with record(unet, request, (side, side)) as store:
            try:
                unet(latents, t, encoder_hidden_states=text, added_cond_kwargs=cond)
            except EarlyExit:
                pass
        assert request.hidden_states[0] in store.hidden
        sync()

    t_full = timeit(full, repeats)
    t_early = timeit(early, repeats)
    print(f"[unet] input {image_size}px (latent {side}x{side}), feature {request.hidden_states[0]}")
    print(f"[unet] full forward   {t_full:8.3f} s")
    print(f"[unet] early exit     {t_early:8.3f} s   ratio {t_early / t_full:.2f}x (target <= 0.6x)")


# ---------------------------------------------------------------------------------- NCut
def clustered_features(side: int, channels: int = 1280, k: int = 6, seed: int = 0) -> torch.Tensor:
    """(C, side, side) features: k smooth random regions, each a centre plus noise."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, k, 4, 4, generator=g), size=(side, side), mode="bilinear")
    region = field[0].argmax(0)  # (side, side)
    centres = torch.randn(k, channels, generator=g)
    feats = centres[region].permute(2, 0, 1) + 0.5 * torch.randn(channels, side, side, generator=g)
    return feats


def _loop_bipartition(a: torch.Tensor, num_thresholds: int = 100):
    """Baseline: dense D, two dense matmuls for the Laplacian, one Python step per threshold."""
    d = torch.diag(a.sum(1))
    d_is = torch.diag(1 / torch.diag(d) ** 0.5)
    try:
        _, vec = torch.linalg.eigh(d_is @ (d - a) @ d_is)
    except RuntimeError:
        return None
    y = d_is @ vec[:, 1]
    y = y * torch.sign(y[torch.argmax(y.abs())])
    lap, diag, total = d - a, torch.diag(d), torch.sum(d)
    best, best_x = float("inf"), None
    for thr in torch.linspace(float(y.min()) * 0.99, float(y.max()) * 0.99, num_thresholds):
        x = 2 * (y > thr).float() - 1
        k = torch.sum(diag * (x > 0)) / total
        z = (1 + x) - k / (1 - k) * (1 - x)
        value = ((z @ lap @ z) / (z @ d @ z)).item()
        if value < best:
            best, best_x = value, y > thr
    return best_x, best


def loop_recursive_ncut(features: torch.Tensor, tau: float = 0.5, alpha: float = 10.0) -> int:
    """Baseline recursion (same tree as ours, loop bipartition); returns the number of leaves."""
    c, h, w = features.shape
    a = ncut.affinity_matrix(features.reshape(c, h * w), alpha)
    leaves, stack = 0, [torch.arange(h * w)]
    while stack:
        idx = stack.pop()
        cut = _loop_bipartition(a[idx][:, idx]) if idx.numel() > 1 else None
        if cut is None or not cut[1] < tau:
            leaves += 1
            continue
        stack += [idx[~cut[0]], idx[cut[0]]]
    return leaves


def _loop_search(y: torch.Tensor, a: torch.Tensor, num_thresholds: int = 100) -> float:
    """Baseline threshold search alone: one quadratic form and one `.item()` per threshold."""
    d = torch.diag(a.sum(1))
    lap, diag, total = d - a, torch.diag(d), torch.sum(d)
    best = float("inf")
    for thr in torch.linspace(float(y.min()) * 0.99, float(y.max()) * 0.99, num_thresholds):
        x = 2 * (y > thr).float() - 1
        k = torch.sum(diag * (x > 0)) / total
        z = (1 + x) - k / (1 - k) * (1 - x)
        best = min(best, ((z @ lap @ z) / (z @ d @ z)).item())
    return best


def _batched_search(y: torch.Tensor, a: torch.Tensor, num_thresholds: int = 100) -> float:
    """Our threshold search (the body of `ncut.bipartition` after the eigensolver)."""
    degree = a.sum(1)
    thr = torch.linspace(float(y.min()) * 0.99, float(y.max()) * 0.99, num_thresholds)
    pos = y[:, None] > thr[None, :]
    x = pos.float() * 2 - 1
    b = (degree[:, None] * pos).sum(0) / degree.sum()
    z = (1 + x) - (b / (1 - b))[None, :] * (1 - x)
    cut = (z * (degree[:, None] * z - a @ z)).sum(0) / (degree[:, None] * z * z).sum(0)
    return float(cut.min())


def bench_ncut(repeats: int) -> None:
    for side in (32, 64):
        feats = clustered_features(side)
        a = ncut.affinity_matrix(feats.reshape(feats.shape[0], -1))
        y = fiedler_vector(a, a.sum(1))
        assert abs(_loop_search(y, a) - _batched_search(y, a)) < 1e-3
        t_b = timeit(lambda y=y, a=a: _batched_search(y, a), 5)
        t_l = timeit(lambda y=y, a=a: _loop_search(y, a), 3)
        print(
            f"[ncut] threshold search only, {side * side} tokens x 100 thresholds: batched "
            f"{t_b * 1e3:7.1f} ms   loop {t_l * 1e3:7.1f} ms   ratio {t_b / t_l:.2f}x"
        )
    for side in (32, 64):
        feats = clustered_features(side)
        labels = ncut.recursive_normalized_cut(feats)
        reps = repeats if side == 32 else 1
        t_ours = timeit(lambda f=feats: ncut.recursive_normalized_cut(f), reps, warmup=0)
        t_loop = timeit(lambda f=feats: loop_recursive_ncut(f), reps, warmup=0)
        print(f"[ncut] {side}x{side} tokens, 1280 ch: {int(labels.max()) + 1} segments")
        print(
            f"[ncut] {side}x{side} recursive cut: ours {t_ours:7.3f} s   loop baseline (full torch eigh, "
            f"dense D, per-threshold loop) {t_loop:7.3f} s"
            f"   ratio {t_ours / t_loop:.2f}x" + ("   (target < 0.5 s)" if side == 32 else "")
        )


# ---------------------------------------------------------------------------------- PAMR
def conv_pamr(image: torch.Tensor, masks: torch.Tensor, num_iter: int, dilations) -> torch.Tensor:
    """Baseline: the convolution formulation (shift kernels, one dilated conv per dilation)."""
    neighbours = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    window = neighbours[:4] + [(1, 1)] + neighbours[4:]

    def shift(x: torch.Tensor, pos, centre: bool) -> torch.Tensor:
        b, k, h, w = x.shape
        wt = torch.zeros(len(pos), 1, 3, 3, dtype=x.dtype)
        for i, (r, c) in enumerate(pos):
            wt[i, 0, r, c] = -1.0 if centre else 1.0
            if centre:
                wt[i, 0, 1, 1] = 1.0
        flat = x.reshape(b * k, 1, h, w)
        out = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), wt, dilation=d) for d in dilations]
        return torch.cat(out, 1).reshape(b, k, -1, h, w)

    std = shift(image, window, False).std(2, keepdim=True)
    aff = F.softmax((-shift(image, neighbours, True).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True), 2)
    for _ in range(num_iter):
        masks = (shift(masks, neighbours, False) * aff).sum(2)
    return masks


def bench_pamr(repeats: int, num_labels: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=g)
    region = F.interpolate(torch.rand(1, num_labels, 8, 8, generator=g), size=(512, 512), mode="bilinear")[0].argmax(0)
    masks = F.one_hot(region, num_labels).permute(2, 0, 1)[None].float()
    dil = (1, 2, 4, 8)
    ours = pamr(image, masks, 10, dil)
    base = conv_pamr(image, masks, 10, dil)
    assert torch.allclose(ours, base, atol=1e-4)
    t_ours = timeit(lambda: pamr(image, masks, 10, dil), repeats, warmup=0)
    t_conv = timeit(lambda: conv_pamr(image, masks, 10, dil), 1, warmup=0)
    print(f"[pamr] 512x512, {num_labels} labels, 10 iters, dilations {dil}")
    print(f"[pamr] ours (shifted views) {t_ours:7.3f} s   conv baseline {t_conv:7.3f} s   ratio {t_ours / t_conv:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=1024, help="UNet input side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--only-unet", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of torch and of the BLAS pools (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load}, device {args.device}"
    )
    if not args.only_unet:
        bench_ncut(args.repeats)
        bench_pamr(args.repeats)
    if not args.skip_unet:
        bench_unet(args.image_size, args.device, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
