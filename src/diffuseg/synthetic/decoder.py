"""Fine-tune the VAE decoder with the encoder frozen (the latent space does not move).

The UNet is trained on the encoder's latents, so the decoder can keep improving afterwards (or
alongside) without invalidating the UNet, as Stable Diffusion's ft-EMA/ft-MSE VAEs did. Only
sample quality changes; attention maps, and so every segmentation method, do not.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["finetune_decoder"]

logger = logging.getLogger(__name__)


def finetune_decoder(
    run_dir: str | Path,
    steps: int,
    batch_size: int = 16,
    lr: float = 5e-4,
    seed: int = 0,
    log_every: int = 25,
    save_minutes: float = 5.0,
) -> Path:
    """Train ``<run_dir>/vae``'s decoder (post_quant_conv + decoder) on the run's scene pool.

    Args:
        run_dir: a training run with ``pool.npz`` and ``vae/``.
        steps: optimizer steps, >= 1.
        batch_size: images per step, >= 1.
        lr: AdamW learning rate (cosine to zero), > 0.
        seed: seed of the batch / posterior-sample generator.
        log_every: log interval in steps.
        save_minutes: write ``vae/`` every this many minutes (and at the end).

    Returns:
        The VAE folder (overwritten in place; the encoder weights are unchanged bit for bit).

    Raises:
        ValueError: on a non-positive `steps`, `batch_size` or `lr`.
        FileNotFoundError: when the run has no pool or VAE yet.
    """
    from diffusers import AutoencoderKL

    from diffuseg.synthetic.train import _to_tensor

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"`steps`, `batch_size` and `lr` must be positive, got {steps}, {batch_size}, {lr}.")
    run_dir = Path(run_dir)
    vae_dir = run_dir / "vae"
    if not (run_dir / "pool.npz").exists() or not (vae_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} has no pool.npz or vae/; run `diffuseg train proving-ground` first.")
    images = np.load(run_dir / "pool.npz")["images"]  # (N, S, S, 3) uint8
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.encoder.requires_grad_(False)
    if vae.quant_conv is not None:
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + np.cos(np.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(seed * 1000 + 7)
    t0 = last_save = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen).numpy()
        x = _to_tensor(images[idx])  # (B, 3, S, S) in [-1, 1]
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            logger.info("decoder step %d/%d rec %.4f (%.0fs)", step, steps, loss.item(), time.time() - t0)
        if time.time() - last_save > 60 * save_minutes or step == steps - 1:
            vae.save_pretrained(vae_dir)
            last_save = time.time()
    stages = run_dir / "stages.json"
    info = json.loads(stages.read_text()) if stages.exists() else {}
    info.setdefault("decoder_finetune", []).append(
        {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seconds": round(time.time() - t0, 1),
            "final_rec": loss.item(),
        }
    )
    stages.write_text(json.dumps(info, indent=2))
    return vae_dir
