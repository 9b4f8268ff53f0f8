"""Sample images from a toy model for a list of captions, laid out as a caption-by-sample grid (docs, README).

python -m diffuseg.synthetic.samples --out docs/img/toy_samples.png
python -m diffuseg.synthetic.samples --model src/diffuseg/data/toy-mmdit --steps 28 --scale 1 \
    --out docs/img/toy_mmdit_samples.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

__all__ = ["DEFAULT_CAPTIONS", "sample_images", "grid"]

logger = logging.getLogger(__name__)

#: Captions covering every class (objects, colours, textures, backgrounds).
DEFAULT_CAPTIONS: tuple[str, ...] = (
    "a red circle on grass",
    "a blue square on sand",
    "a yellow star in the sky",
    "a striped green triangle on water",
    "a purple heart and a white circle on grass",
    "an orange house on grass under the sky",
    "a green tree on sand under the sky",
    "a checkered black square and a dotted red star on water",
)


@torch.no_grad()
def sample_images(
    model: str | Path,
    captions: tuple[str, ...] = DEFAULT_CAPTIONS,
    num_per_caption: int = 4,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    seed: int = 0,
) -> list[list[Image.Image]]:
    """Generate `num_per_caption` images per caption with the folder's own pipeline and scheduler
    (the toy UNet: DDIM; the toy MM-DiT: flow-matching Euler) and classifier-free guidance.

    Args:
        model: a diffusers pipeline folder (e.g. the shipped ``diffuseg/data/toy`` or ``toy-mmdit``).
        captions: prompts.
        num_per_caption: images per prompt (one batch each).
        num_inference_steps: sampler steps.
        guidance_scale: classifier-free guidance weight (the model saw 10 % empty captions).
        seed: seed of the torch.Generator.

    Returns:
        One list of PIL RGB images (model resolution) per caption.
    """
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)  # the class named by its model_index.json
    pipe.set_progress_bar_config(disable=True)
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    size = denoiser.config.sample_size * pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    out = []
    for caption in captions:
        result = pipe(
            [caption] * num_per_caption,
            height=size,
            width=size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gen,
        )
        out.append(result.images)
    return out


def grid(rows: list[list[Image.Image]], labels: list[str] | None = None, scale: int = 2) -> Image.Image:
    """Paste images into a grid (one row per list), upscaled by `scale`, captions on the left."""
    cell = rows[0][0].size[0] * scale
    text_w = 330 if labels else 0
    canvas = Image.new("RGB", (text_w + cell * max(len(r) for r in rows), cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(im.resize((cell, cell), Image.NEAREST), (text_w + j * cell, i * cell))
        if labels:
            words, line, lines = labels[i].split(), "", []
            for w in words:
                if len(line) + len(w) > 38:
                    lines.append(line)
                    line = ""
                line = (line + " " + w).strip()
            lines.append(line)
            for k, text in enumerate(lines):
                draw.text((6, i * cell + 6 + 14 * k), text, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    """Write a caption-by-sample grid PNG (and print the captions)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "data" / "toy"))
    parser.add_argument("--out", default="docs/img/toy_samples.png")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of each sample in the grid")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    torch.set_num_threads(1)
    rows = sample_images(args.model, DEFAULT_CAPTIONS, args.num, args.steps, args.guidance, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid(rows, list(DEFAULT_CAPTIONS), scale=args.scale).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
