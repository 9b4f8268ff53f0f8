"""DiffSegmenter benchmark: all class prompts of an image in one batched UNet call vs one call
per class, on an SD-1.5-shaped model with random weights (speed does not depend on weights).

Both variants run the whole method through `diffuseg.Segmenter` on one 512 x 512 image with 5
class names, each in a fresh process (so the peak resident memory, VmHWM, is its own):

* ``batched``: one `Segmenter` call with the 5 classes: one VAE encoding, one text-encoder call
  for 5 prompts and one UNet call at batch 5 (the conditional half only), then the 5 maps.
* ``sequential``: 5 `Segmenter` calls with one class each, the published code's shape (one UNet
  call per class; the reference also runs an unconditional half that it discards, which is
  not counted here, so the baseline is the cheaper one).

Target: batched <= 0.6x the sequential time on CPU. On a GPU (``--device cuda --dtype fp16``)
the peak is the CUDA allocator's (`torch.cuda.max_memory_allocated`) and times are synchronised.

    ./run python benchmarks/bench_diffsegmenter.py [--size 512] [--classes 5] [--threads 2]
                                                  [--device cpu|cuda] [--dtype fp32|fp16|bf16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _configs import SD15_TEXT, SD15_UNET, SD_VAE  # noqa: E402

CLASSES = ("cat", "sofa", "window", "potted plant", "television", "lamp", "rug", "dog")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build_backbone():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffuseg.backbone import DiffusionBackbone
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    return DiffusionBackbone(
        unet=UNet2DConditionModel(**SD15_UNET),
        vae=AutoencoderKL(**SD_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        tokenizer=build_clip_tokenizer(),
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        name="sd15-shaped-random",
    )


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(variant: str, size: int, num_classes: int, device: str = "cpu", dtype: str = "fp32") -> None:
    """Time one variant (after a warm-up at 64 px) and print seconds, peak MB, model calls."""
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    backbone = build_backbone().to(device, DTYPES[dtype])
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    classes = CLASSES[:num_classes]
    seg = Segmenter(backbone, "diffsegmenter", image_size=size)
    gen = torch.Generator(device).manual_seed(0)
    seg(Query(image=image[:, :64, :64], classes=classes[:1]), gen)  # warm-up (small)
    calls = seg.model_calls
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    if variant == "batched":
        seg(Query(image=image, classes=classes), gen)
    else:
        for c in classes:
            seg(Query(image=image, classes=(c,)), gen)
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mb()
    print(f"{seconds:.3f} {peak:.0f} {seg.model_calls - calls}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.size, args.classes, args.device, args.dtype)
        return
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"DiffSegmenter, SD-1.5-shaped UNet + VAE + CLIP text encoder (random weights), "
        f"{args.size}x{args.size}, {args.classes} classes, {args.device} {args.dtype}, {args.threads} threads"
    )
    results = {}
    for variant in ("sequential", "batched"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--size", str(args.size), "--classes", str(args.classes),
             "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        seconds, peak, calls = float(out[0]), float(out[1]), int(out[2])
        results[variant] = seconds
        print(f"  {variant:10s}: {seconds:7.2f} s  {memory} {peak:6.0f} MB  model calls {calls}")
    ratio = results["batched"] / results["sequential"]
    print(f"batched / sequential time: {ratio:.2f}x (target <= 0.6x)")


if __name__ == "__main__":
    main()
