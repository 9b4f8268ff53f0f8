"""Run the toy diffusion transformer's training end to end and export it as an SD3 folder."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from diffuseg.synthetic.mmdit_model import (
    ToyMMDiTConfig,
    build_mmdit_scheduler,
    build_mmdit_text_encoders,
    build_mmdit_tokenizer,
    build_transformer,
    build_vae_from,
)
from diffuseg.synthetic.mmdit_train import MMDiTState, MMDiTTrainConfig, config_dict, train_mmdit
from diffuseg.synthetic.model import ToyModelConfig
from diffuseg.synthetic.scenes import SceneConfig
from diffuseg.synthetic.tokenizer import write_clip_vocab
from diffuseg.synthetic.train import TrainConfig, build_labels, build_pool, encode_pool

__all__ = ["TOY_MMDIT_DIR", "build_toy_pipeline", "export_mmdit", "load_run_config", "train_toy_mmdit"]

logger = logging.getLogger(__name__)

#: Where the shipped toy diffusion transformer lives (package data).
TOY_MMDIT_DIR = Path(__file__).resolve().parents[1] / "data" / "toy-mmdit"


def build_toy_pipeline(config: MMDiTTrainConfig):
    """A ``StableDiffusion3Pipeline`` of fresh toy parts (the VAE loaded from ``config.vae``)."""
    from diffusers import StableDiffusion3Pipeline

    gen = torch.Generator().manual_seed(config.seed * 1000 + 3)
    vae = build_vae_from(config.vae)
    clip_l, clip_g, t5 = build_mmdit_text_encoders(config.model, gen)
    tokenizer = build_mmdit_tokenizer(config.model)
    return StableDiffusion3Pipeline(
        transformer=build_transformer(config.model, int(vae.config.latent_channels), gen),
        scheduler=build_mmdit_scheduler(), vae=vae,
        text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer,
        text_encoder_3=t5, tokenizer_3=tokenizer,
    )  # fmt: skip


def _pool_config(config: MMDiTTrainConfig) -> TrainConfig:
    """The UNet trainer's config for the shared pool stages (same scenes, at the model size)."""
    return TrainConfig(
        out=config.out, seed=config.seed, num_scenes=config.num_scenes,
        model=ToyModelConfig(image_size=config.model.image_size), scene=config.scene,
    )  # fmt: skip


def load_run_config(out: str | Path) -> MMDiTTrainConfig:
    """The config stored in a run directory (``config.json``)."""
    data = json.loads((Path(out) / "config.json").read_text())
    model = ToyMMDiTConfig(**data.pop("model"))
    scene = SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("scene").items()})
    return MMDiTTrainConfig(**data, model=model, scene=scene)


def train_toy_mmdit(config: MMDiTTrainConfig, command: str = "") -> tuple[object, MMDiTState]:
    """Run (or resume) every stage under ``config.out``; returns the pipeline and final state."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_dict(config), indent=2))
    _append_command(out, command)
    t0 = time.time()
    pool = _pool_config(config)
    images, captions = build_pool(pool)
    labels = build_labels(pool, captions)
    pipe = build_toy_pipeline(config)
    latents = encode_pool(pool, pipe.vae, images)
    logger.info("pool and latents ready (%.0fs)", time.time() - t0)
    state = train_mmdit(config, pipe, latents, labels, captions)
    return pipe, state


def _append_command(out: Path, command: str) -> None:
    path = out / "commands.json"
    data = json.loads(path.read_text()) if path.exists() else []
    data.append({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path.write_text(json.dumps(data, indent=2))


def export_mmdit(pipe, state: MMDiTState, folder: str | Path) -> Path:
    """Write the EMA weights as a diffusers SD3 folder plus ``TRAINING.json``; returns `folder`.

    Written to a sibling temporary folder first and moved into place, so an interrupted export
    leaves the previous model intact.
    """
    import diffusers
    import transformers

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    with state.ema_weights():
        pipe.save_pretrained(tmp)
    for part in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        # as the toy UNet's: vocab.json + merges.txt load with transformers 4.x and 5.x;
        # tokenizer.json (3.6 MB, the same tables) is left out to keep the package small
        write_clip_vocab(tmp / part)
        (tmp / part / "tokenizer.json").unlink(missing_ok=True)
    run = Path(state.config.out)
    record = {
        "what": "diffuseg proving-ground toy diffusion transformer (SD3-shaped): EMA weights of the "
        "transformer and the three text encoders; the VAE is the toy UNet's",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": state.step,
        "train_seconds": round(state.seconds, 1),
        "losses": [[s, round(f, 5), round(g, 5)] for s, f, g in state.losses],
        "loss_columns": ["step", "flow", "grounding"],
        "commands": json.loads((run / "commands.json").read_text()) if (run / "commands.json").exists() else [],
        "config": config_dict(state.config),
        "versions": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },  # fmt: skip
        "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in state.modules.items()},
        "resume": f"diffuseg train toy-mmdit --out {state.config.out} --resume --steps <N>",
    }
    (tmp / "TRAINING.json").write_text(json.dumps(record, indent=1))
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.replace(old)
        tmp.replace(folder)
        shutil.rmtree(old)
    else:
        tmp.replace(folder)
    return folder
