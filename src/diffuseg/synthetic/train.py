"""Train the proving-ground model on CPU: scene pool -> VAE -> latents -> UNet + text encoder.

Every stage writes its result under ``TrainConfig.out`` and is skipped when that result exists,
so an interrupted run resumes where it stopped (the UNet stage from its last checkpoint, with
optimizer, EMA and generator state). `export_pipeline` writes the EMA weights as a standard
diffusers `StableDiffusionPipeline` folder plus ``TRAINING.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffuseg.synthetic.dataset import scene_rng

if TYPE_CHECKING:
    from diffuseg.synthetic.checkpoint import TrainState
from diffuseg.synthetic.model import (
    ToyModelConfig,
    build_scheduler,
    build_vae,
)
from diffuseg.synthetic.scenes import CLASS_NAMES, SceneConfig, render_scene

__all__ = ["TrainConfig", "build_pool", "build_labels", "train_vae", "encode_pool", "train_unet"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of `diffuseg train proving-ground`.

    Attributes:
        out: run directory (pool, VAE, latents, checkpoints, log).
        seed: master seed (scene pool uses the "train" split stream; init and noise derive from it).
        num_scenes: size of the pre-rendered training pool. 20k scenes x ~10 epochs at the
            default budget; scenes are cheap, the model is not.
        vae_steps / vae_batch / vae_lr: AutoencoderKL stage (L1 + MSE reconstruction).
        vae_kl_weight: KL weight; tiny (SD's VAE uses 1e-6) so latents stay informative.
        steps: UNet optimizer steps (total, including resumed ones).
        batch_size / lr: UNet + text encoder AdamW. Constant lr after `warmup_steps` so that a
            run can be extended with ``--resume --steps N``; EMA does the averaging.
        ema_decay: EMA decay (with the usual (1 + n) / (10 + n) warm-up).
        min_snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023, gamma = 5).
        caption_dropout: fraction of empty captions, for classifier-free guidance.
        shuffle_phrases: list the object phrases in a random order at every step (captions of
            the dataset list them left to right). Word order then says nothing about where an
            object is, so the UNet has to find out with cross-attention from the word tokens:
            with left-to-right captions and a pooled summary in the end-of-text / padding
            tokens, the first 1,000 steps learned flat cross-attention (all tokens alike).
        grounding_weight: weight of TokenCompose's token grounding loss (Wang et al. 2024,
            `diffuseg.synthetic.grounding`): each class word's cross-attention mass is pulled
            into its class's mask. 0 turns it off. Without it 4,748 CPU steps left word-token
            cross-attention at chance level (docs/proving_ground.md).
        grounding_max_timestep: the grounding loss applies to timesteps below this only; at
            higher noise the latent says little about where the objects are.
        checkpoint_minutes: wall time between checkpoints.
        model: architecture.
        scene: scene distribution (rendered at `scene.size`, resized to `model.image_size`).
    """

    out: str = "runs/proving_ground"
    seed: int = 0
    num_scenes: int = 20_000
    vae_steps: int = 350
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    steps: int = 8000
    batch_size: int = 48
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    shuffle_phrases: bool = True
    grounding_weight: float = 0.1
    grounding_max_timestep: int = 700
    checkpoint_minutes: float = 5.0
    log_every: int = 25
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self) -> None:
        for name in ("num_scenes", "vae_batch", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("vae_steps", "steps", "warmup_steps", "seed", "grounding_max_timestep"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if not (0.0 <= self.caption_dropout < 1.0):
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}.")
        if self.grounding_weight < 0:
            raise ValueError(f"`grounding_weight` must be >= 0, got {self.grounding_weight}.")
        if self.lr <= 0 or self.vae_lr <= 0:
            raise ValueError(f"`lr` and `vae_lr` must be > 0, got {self.lr}, {self.vae_lr}.")


# --------------------------------------------------------------------------- stage 1: pool


def scene_to_array(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (H, W, 3) scene to (size, size, 3) uint8 with PIL bicubic (antialiased)."""
    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def label_to_array(label: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W) label map to (size, size) uint8 class ids with nearest neighbour."""
    label = label.astype(np.uint8)
    if label.shape[0] == size:
        return label
    return np.asarray(Image.fromarray(label).resize((size, size), Image.NEAREST))


def _save_labels(config: TrainConfig, labels: np.ndarray) -> None:
    path = Path(config.out) / "labels.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, labels=labels)
    tmp.replace(path)


def build_pool(config: TrainConfig) -> tuple[np.ndarray, list[str]]:
    """Render (or load) the training pool: uint8 (N, S, S, 3) images and N captions.

    A freshly rendered pool also writes its label maps (``labels.npz``, see `build_labels`)
    from the same scenes, so they are rendered once.
    """
    path = Path(config.out) / "pool.npz"
    if path.exists():
        data = np.load(path)
        return data["images"], json.loads(str(data["captions"]))
    t0 = time.time()
    size = config.model.image_size
    images = np.empty((config.num_scenes, size, size, 3), dtype=np.uint8)
    labels = np.empty((config.num_scenes, size, size), dtype=np.uint8)
    captions = []
    for i in range(config.num_scenes):
        scene = render_scene(config.scene, scene_rng("train", i, config.seed))
        images[i] = scene_to_array(scene.image, size)
        labels[i] = label_to_array(scene.label, size)
        captions.append(scene.caption)
        if (i + 1) % 2000 == 0:
            logger.info("pool: %d/%d scenes (%.0fs)", i + 1, config.num_scenes, time.time() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_labels(config, labels)
    np.savez(path, images=images, captions=np.array(json.dumps(captions)))
    return images, captions


def build_labels(config: TrainConfig, captions: list[str] | None = None) -> np.ndarray:
    """Load the label maps of the pool: uint8 (N, S, S) class ids at the model size.

    `build_pool` writes them; a pool rendered before that (the grounding loss came later) has
    its scenes re-rendered from their seeds here, the captions checked against the pool's so
    that labels and images cannot drift apart.
    """
    path = Path(config.out) / "labels.npz"
    if path.exists():
        return np.load(path)["labels"]
    t0 = time.time()
    size = config.model.image_size
    labels = np.empty((config.num_scenes, size, size), dtype=np.uint8)
    for i in range(config.num_scenes):
        scene = render_scene(config.scene, scene_rng("train", i, config.seed))
        if captions is not None and scene.caption != captions[i]:
            raise RuntimeError(f"scene {i} re-rendered with another caption: the pool was built differently.")
        labels[i] = label_to_array(scene.label, size)
        if (i + 1) % 2000 == 0:
            logger.info("labels: %d/%d scenes (%.0fs)", i + 1, config.num_scenes, time.time() - t0)
    _save_labels(config, labels)
    return labels


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------- stage 2: VAE


def train_vae(config: TrainConfig, images: np.ndarray):
    """Train (or load) the AutoencoderKL; sets `scaling_factor` to 1 / std of the latents."""
    path = Path(config.out) / "vae"
    from diffusers import AutoencoderKL

    if (path / "config.json").exists():
        return AutoencoderKL.from_pretrained(path)
    gen = torch.Generator().manual_seed(config.seed * 1000 + 1)
    vae = build_vae(config.model, gen)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / max(1, config.vae_steps))),
    )
    t0 = time.time()
    for step in range(config.vae_steps):
        idx = torch.randint(0, len(images), (config.vae_batch,), generator=gen).numpy()
        x = _to_tensor(images[idx])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec + config.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % config.log_every == 0 or step == config.vae_steps - 1:
            logger.info(
                "vae step %d/%d rec %.4f (%.0fs)",
                step,
                config.vae_steps,
                rec.item(),
                time.time() - t0,
            )
    vae.eval()
    with torch.no_grad():
        z = vae.encode(_to_tensor(images[:512])).latent_dist.sample(gen)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(path)
    _append_json(
        Path(config.out) / "stages.json",
        {"vae_seconds": time.time() - t0, "vae_final_rec": rec.item()},
    )
    return vae


@torch.no_grad()
def encode_pool(config: TrainConfig, vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode (or load) the pool: posterior mean and std, float16 (N, C, h, w) each, unscaled."""
    path = Path(config.out) / "latents.pt"
    if path.exists():
        data = torch.load(path)
        return data["mean"], data["std"]
    vae.eval()
    means, stds = [], []
    for i in range(0, len(images), 256):
        posterior = vae.encode(_to_tensor(images[i : i + 256])).latent_dist
        means.append(posterior.mean.half())
        stds.append(posterior.std.half())
    mean, std = torch.cat(means), torch.cat(stds)
    torch.save({"mean": mean, "std": std}, path)
    return mean, std


def _append_json(path: Path, values: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


# --------------------------------------------------------------------------- stage 3: UNet


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight of min-SNR-gamma (Hang et al. 2023, eq. 8-9); (B,) float32."""
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def shuffle_phrases(caption: str, generator: torch.Generator) -> str:
    """Random order of the object phrases of a `make_caption` caption (same words otherwise).

    "a red circle, a blue star and a tree on grass" -> e.g. "a tree, a red circle and a blue
    star on grass". Captions with one object come back unchanged.
    """
    for sep in (" on ", " in the sky"):
        if sep in caption:
            cut = caption.index(sep)
            things, where = caption[:cut], caption[cut:]
            break
    else:
        return caption
    head, _, last = things.rpartition(" and ")
    phrases = (head.split(", ") if head else []) + [last]
    if len(phrases) < 2:
        return caption
    order = torch.randperm(len(phrases), generator=generator).tolist()
    phrases = [phrases[i] for i in order]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + where


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (N, model_max_length) int64, padded with <|endoftext|> as in Stable Diffusion."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_unet(
    config: TrainConfig,
    latents: tuple[torch.Tensor, torch.Tensor],
    scaling_factor: float,
    captions: list[str],
    tokenizer,
    init_from: str | None = None,
    labels: np.ndarray | None = None,
) -> TrainState:
    """Train UNet + text encoder jointly (resumable); returns the final `TrainState`.

    Args:
        config: hyperparameters (`steps` is the total, resumed steps included).
        latents: VAE posterior (mean, std), each float16 (N, C, h, w), unscaled.
        scaling_factor: the VAE's `scaling_factor` (latents are multiplied by it).
        captions: N captions, aligned with `latents`.
        tokenizer: the CLIP tokenizer (prompts padded to `model_max_length`).
        init_from: exported model folder to start from when the run has no checkpoint.
        labels: uint8 (N, S, S) class ids of the scenes (`build_labels`); needed when
            `config.grounding_weight` > 0.
    """
    from diffuseg.synthetic.checkpoint import TrainState
    from diffuseg.synthetic.grounding import grounding_attention, token_classes, token_grounding_loss

    grounding = config.grounding_weight > 0
    if grounding and labels is None:
        raise ValueError("`labels` are required when `grounding_weight` > 0 (see `build_labels`).")
    class_ids = [tokenizer.convert_tokens_to_ids(name + "</w>") for name in CLASS_NAMES]

    state = TrainState.load_or_create(config, init_from)
    unet, text_encoder = state.unet, state.text_encoder
    scheduler = build_scheduler(config.model)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    ids = None if config.shuffle_phrases else tokenize(tokenizer, captions)  # (N, T)
    empty = tokenize(tokenizer, [""])[0]  # (T,)
    mean, std = latents
    gen = state.generator
    params = list(unet.parameters()) + list(text_encoder.parameters())
    last_ckpt = time.time()
    window: list[float] = []
    g_window: list[float] = []
    step_times: list[float] = []
    unet.train()
    text_encoder.train()
    while state.step < config.steps:
        t_step = time.time()
        idx = torch.randint(0, len(captions), (config.batch_size,), generator=gen)
        z0 = (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor
        if ids is None:
            tok = tokenize(tokenizer, [shuffle_phrases(captions[i], gen) for i in idx.tolist()])
        else:
            tok = ids[idx].clone()
        drop = torch.rand(config.batch_size, generator=gen) < config.caption_dropout
        tok[drop] = empty
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t) if config.model.prediction_type == "v_prediction" else noise
        cond = text_encoder(tok).last_hidden_state  # (B, T, D)
        with grounding_attention(unet) if grounding else contextlib.nullcontext([]) as maps:
            pred = unet(zt, t, cond).sample
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
        weight = min_snr_weight(alphas_cumprod, t, config.min_snr_gamma, config.model.prediction_type)
        loss = (per_sample * weight).mean()
        if grounding:
            g_loss = token_grounding_loss(
                maps,
                torch.from_numpy(labels[idx.numpy()]).long(),
                token_classes(tok, class_ids),
                len(CLASS_NAMES),
                sample_weight=(t < config.grounding_max_timestep).float(),
            )
            loss = loss + config.grounding_weight * g_loss
            g_window.append(g_loss.item())
        lr = config.lr * min(1.0, (state.step + 1) / max(1, config.warmup_steps))
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        state.optimizer.step()
        state.update_ema(config.ema_decay)
        state.step += 1
        state.seconds += time.time() - t_step
        step_times.append(time.time() - t_step)
        window.append(per_sample.mean().item())
        if state.step % config.log_every == 0:
            avg = float(np.mean(window))
            state.losses.append((state.step, avg))
            logger.info(
                "unet step %d/%d loss %.4f grounding %.4f lr %.2e (%.2fs/step, %.0fs total)",
                state.step,
                config.steps,
                avg,
                float(np.mean(g_window)) if g_window else 0.0,
                lr,
                float(np.mean(step_times)),
                state.seconds,
            )
            window.clear()
            g_window.clear()
            step_times.clear()
        if time.time() - last_ckpt > 60 * config.checkpoint_minutes or state.step >= config.steps:
            state.save()
            last_ckpt = time.time()
    return state
