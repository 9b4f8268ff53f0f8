"""MaskDiffusion benchmark: the recorded pass vs a plain UNet forward, on an SD-1.5-shaped UNet
with random weights at 512 x 512 (speed does not depend on weights).

* plain: ``unet(latents, t, text)``;
* recorded: the same call recording MaskDiffusion's request (log unnormalised cross-attention
  of the two coarsest levels, outputs of up blocks 1 and 2);
* segment: the method's post-processing on those recordings (prototypes, upsampling, argmax).

Target: (recorded + segment) <= 1.4x plain on CPU.

    ./run python benchmarks/bench_maskdiffusion.py [--size 512] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _configs import SD15_UNET  # noqa: E402
from bench_core import best_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel

    from diffuseg.backbone.features import FeatureRequest, Features
    from diffuseg.backbone.layers import attention_levels
    from diffuseg.backbone.recorder import record
    from diffuseg.methods.maskdiffusion import MaskDiffusionConfig, segment
    from diffuseg.plan import Query
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    lat = args.size // 8
    latents = torch.randn(1, 4, lat, lat)
    text = torch.randn(1, 77, SD15_UNET["cross_attention_dim"])
    config = MaskDiffusionConfig()
    levels = attention_levels(unet, "attn2")
    request = FeatureRequest(
        cross_attention=tuple(n for v in config.attention_levels for n in levels[v]),
        normalization="log",
        hidden_states=tuple(f"up_blocks.{b}" for b in config.feature_blocks),
    )
    names = ["road", "car", "sky", "tree", "person", "bus", "sign", "wall"][: args.classes]
    tokenizer = build_clip_tokenizer()
    prompt = " and ".join(names)
    ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    print(f"MaskDiffusion, SD-1.5-shaped UNet (random weights), {args.size}x{args.size}, {args.classes} classes, "
          f"{args.threads} threads, best of {args.repeats}")  # fmt: skip
    store_box = {}
    with torch.no_grad():
        unet(latents, 0, encoder_hidden_states=text)  # warm-up
        plain = best_of(lambda: unet(latents, 0, encoder_hidden_states=text), args.repeats)

        def recorded():
            with record(unet, request, (lat, lat)) as store:
                unet(latents, 0, encoder_hidden_states=text)
            store_box["store"] = store

        rec = best_of(recorded, args.repeats)
        store = store_box["store"]
        feats = Features(
            cross_attention=store.maps["cross"],
            hidden_states=store.hidden,
            layer_sizes=store.sizes,
            layer_counts=dict(store.counts["cross"]),
            images=torch.zeros(1, 3, args.size, args.size),
            prompts=[prompt],
            token_ids=ids,
            tokenizer=tokenizer,
            latent_size=(lat, lat),
            normalization="log",
        )
        query = Query(classes=tuple((n,) for n in names))
        post = best_of(lambda: segment(feats, config, query), args.repeats)
    print(f"  plain UNet forward      {plain:7.2f} s")
    print(f"  recorded forward        {rec:7.2f} s  ({rec / plain:.2f}x)")
    print(f"  segment (prototypes)    {post:7.2f} s")
    print(f"recorded + segment / plain: {(rec + post) / plain:.2f}x (target <= 1.4x)")


if __name__ == "__main__":
    main()
