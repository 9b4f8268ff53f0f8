"""Run the proving-ground training end to end and export the model as a diffusers folder."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from diffuseg.synthetic.model import ToyModelConfig, build_scheduler
from diffuseg.synthetic.scenes import SceneConfig
from diffuseg.synthetic.tokenizer import build_clip_tokenizer, write_clip_vocab
from diffuseg.synthetic.train import TrainConfig, build_labels, build_pool, encode_pool, train_unet, train_vae

__all__ = [
    "TOY_MODEL_DIR",
    "config_from_dict",
    "export_pipeline",
    "export_run",
    "train_proving_ground",
]

logger = logging.getLogger(__name__)

#: Where the shipped toy model lives (package data).
TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "toy"


#: Fields added after the first runs, with the value that reproduces a run whose stored
#: config.json predates them (grounding did not exist: off).
_LEGACY_DEFAULTS = {"grounding_weight": 0.0}


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a `TrainConfig` from `dataclasses.asdict` output (lists become tuples)."""
    data = {**_LEGACY_DEFAULTS, **data}
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("model").items()}
    scene = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("scene").items()}
    return TrainConfig(**data, model=ToyModelConfig(**model), scene=SceneConfig(**scene))


def train_proving_ground(
    config: TrainConfig, init_from: str | None = None, command: str = "", steps: int | None = None
) -> Path:
    """Run (or resume) all stages under ``config.out``; returns the run directory.

    Args:
        config: the run's hyperparameters; written to ``<out>/config.json`` on first start.
            On resume the stored config is used, except `steps` when given.
        init_from: optional exported folder to start the UNet / text encoder (and VAE) from.
        command: the command line, recorded in ``<out>/stages.json``.
        steps: on resume, the new total number of UNet steps (None keeps the stored one).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        stored = config_from_dict(json.loads(cfg_path.read_text()))
        steps = stored.steps if steps is None else steps
        if stored.steps != steps:
            logger.info("extending run: steps %d -> %d", stored.steps, steps)
        config = config_from_dict({**asdict(stored), "steps": steps, "out": config.out})
    cfg_path.write_text(json.dumps(asdict(config), indent=2))
    stages = out / "stages.json"
    info = json.loads(stages.read_text()) if stages.exists() else {}
    info.setdefault("commands", []).append(
        {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "threads": torch.get_num_threads(),
        }
    )
    stages.write_text(json.dumps(info, indent=2))

    t0 = time.time()
    images, captions = build_pool(config)
    logger.info("pool ready: %d scenes (%.0fs)", len(images), time.time() - t0)
    if init_from is not None and not (out / "vae" / "config.json").exists():
        shutil.copytree(Path(init_from) / "vae", out / "vae")
    vae = train_vae(config, images)
    latents = encode_pool(config, vae, images)
    logger.info("latents ready: %s, scaling factor %.4f", tuple(latents[0].shape), vae.config.scaling_factor)
    tokenizer = build_clip_tokenizer(config.model.max_length)
    labels = build_labels(config, captions) if config.grounding_weight > 0 else None
    train_unet(config, latents, vae.config.scaling_factor, captions, tokenizer, init_from=init_from, labels=labels)
    return out


def export_pipeline(run_dir: str | Path, out_dir: str | Path = TOY_MODEL_DIR) -> Path:
    """Export the EMA weights of a run as a `StableDiffusionPipeline` folder + TRAINING.json.

    Safe to call while the run is still training: it reads the last checkpoint.

    Args:
        run_dir: a `train_proving_ground` output directory with ``checkpoint.pt`` and ``vae/``.
        out_dir: destination folder (replaced); defaults to the shipped package data.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from diffuseg.synthetic.checkpoint import CHECKPOINT_NAME, TrainState

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt = run_dir / CHECKPOINT_NAME
    if not ckpt.exists():
        raise FileNotFoundError(f"no checkpoint at {ckpt}; train first with `diffuseg train proving-ground`.")
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    config = config_from_dict({**asdict(config), "out": str(run_dir)})
    state = TrainState.load_or_create(config)
    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    tokenizer = build_clip_tokenizer(config.model.max_length)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=state.ema_text_encoder.eval(),
        tokenizer=tokenizer,
        unet=state.ema_unet.eval(),
        scheduler=build_scheduler(config.model),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # vocab.json + merges.txt load with transformers 4.x and 5.x; tokenizer.json (3.6 MB, same
    # content) is dropped to stay under the 30 MB package-data budget.
    write_clip_vocab(tmp / "tokenizer")
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    stages = json.loads((run_dir / "stages.json").read_text()) if (run_dir / "stages.json").exists() else {}
    record = {
        "what": "diffuseg proving-ground toy model: EMA weights of the UNet and text encoder",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "unet_steps": state.step,
        "unet_train_seconds": round(state.seconds, 1),
        "loss_first_last": [state.losses[0], state.losses[-1]] if state.losses else None,
        "losses": state.losses[:: max(1, len(state.losses) // 60)],
        "stages": stages,
        "config": asdict(config),
        "init_from": state.init_from,
        "parent": _parent_record(state.init_from),
        "versions": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "diffusers": _version("diffusers"),
            "transformers": _version("transformers"),
        },
        "parameters": {
            "unet": sum(p.numel() for p in state.ema_unet.parameters()),
            "text_encoder": sum(p.numel() for p in state.ema_text_encoder.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        "method_settings": "the toy model's method presets (`diffuseg env`; the methods' PRESETS)",
        "resume": f"diffuseg train proving-ground --out {run_dir} --steps <N> (run dir), or "
        f"--init-from src/diffuseg/data/toy --out runs/<new> (from the shipped weights)",
    }
    (tmp / "TRAINING.json").write_text(json.dumps(record, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    logger.info("exported step %d to %s", state.step, out_dir)
    return out_dir


def _parent_record(init_from: str | None) -> dict | None:
    """The ``TRAINING.json`` of the folder a run started from (so the lineage stays on record)."""
    if init_from is None:
        return None
    path = Path(init_from) / "TRAINING.json"
    if not path.exists():
        return {"missing": f"{path} not found at export time"}
    return json.loads(path.read_text())


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


export_run = export_pipeline
