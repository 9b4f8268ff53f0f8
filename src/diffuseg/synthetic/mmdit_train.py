"""Train the proving-ground diffusion transformer on CPU (``diffuseg train toy-mmdit``).

Stages, each written under ``MMDiTTrainConfig.out`` and skipped when its result exists: the
scene pool at 128 px (`train.build_pool`), its latents under the toy UNet's VAE
(`train.encode_pool`), then the transformer and its three text encoders, checkpointed every few
minutes (resumable). `export_mmdit` writes the EMA weights as an ordinary diffusers
``StableDiffusion3Pipeline`` folder with ``TRAINING.json`` beside it.

What the toy UNet taught, and what changed for a transformer (docs/proving_ground.md):

* text encoders that do not mix tokens (`mmdit_model`), phrases in random order and 10 %
  empty captions: kept;
* TokenCompose's token grounding loss: kept, on the image->text block of every layer's *joint*
  attention (`JointGroundingProcessor`), for the class words of both the CLIP and the T5 part;
* the objective: rectified flow (SD3, Esser et al. 2024): x_t = sigma * noise + (1 - sigma) * x,
  target noise - x, sigma drawn logit-normal(0, 1) (their best sampler, §5.1) instead of
  uniform DDPM timesteps with min-SNR weights: logit-normal sampling already is SD3's weighting;
* adaLN-Zero initialisation (DiT), and a lower learning rate than the UNet's 5e-4.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0

from diffuseg.synthetic.grounding import token_classes, token_grounding_loss
from diffuseg.synthetic.mmdit_model import ToyMMDiTConfig
from diffuseg.synthetic.scenes import CLASS_NAMES, SceneConfig
from diffuseg.synthetic.train import shuffle_phrases

__all__ = ["JointGroundingProcessor", "MMDiTTrainConfig", "MMDiTState", "joint_grounding", "train_mmdit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MMDiTTrainConfig:
    """Hyperparameters of ``diffuseg train toy-mmdit``.

    Attributes:
        out: run directory (pool, latents, checkpoint, log).
        vae: folder of the VAE to encode with and ship (the toy UNet's, `TOY_MODEL_DIR / "vae"`).
        seed: master seed (the pool is the "train" split stream of the synthetic scenes).
        num_scenes: training pool size (12k: ~4 min of VAE encoding at 128 px on 2 cores).
        steps / batch_size / lr / warmup_steps / weight_decay: AdamW on the transformer and the
            text encoders; constant lr after warm-up (a run can be extended), EMA averages.
            4,500 steps: the shipped model's run (66 min of steps and 5.5 min of pool on 2 cores,
            inside the 90-minute budget).
        ema_decay: EMA decay with the (1 + n) / (10 + n) warm-up.
        logit_mean / logit_std: sigma = sigmoid(N(logit_mean, logit_std)) (SD3's "lognorm(0, 1)").
        caption_dropout: fraction of empty captions (classifier-free guidance; seg4diff reads
            the empty prompt).
        grounding_weight: weight of the token grounding loss (0 turns it off). 1.0, the shipped
            model's; at the toy UNet's 0.1 (the first shipped toy MM-DiT) the class words' maps
            stayed too weak for DiffSegmenter and MaskDiffusion (docs/mmdit_presets.md).
        grounding_max_sigma: the grounding loss applies below this noise level only.
        checkpoint_minutes / log_every: bookkeeping.
    """

    out: str = "runs/toy_mmdit"
    vae: str = ""
    seed: int = 0
    num_scenes: int = 12_000
    steps: int = 4500
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.1
    grounding_weight: float = 1.0
    grounding_max_sigma: float = 0.7
    checkpoint_minutes: float = 5.0
    log_every: int = 25
    model: ToyMMDiTConfig = field(default_factory=ToyMMDiTConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self) -> None:
        for name in ("num_scenes", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("steps", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}.")
        if self.lr <= 0 or self.grounding_weight < 0 or self.logit_std <= 0:
            raise ValueError(
                f"`lr` and `logit_std` must be > 0 and `grounding_weight` >= 0, got {self.lr}, "
                f"{self.logit_std}, {self.grounding_weight}."
            )


class JointGroundingProcessor(JointAttnProcessor2_0):
    """`JointAttnProcessor2_0` that also keeps, with gradients, the head-averaged attention of
    the image queries over the text keys, softmax-normalised over the text (B, N, T), in `store`.

    The output is the parent's (q/k norms, image tokens first, then text, SDPA). The grounding
    maps are normalised over the text keys only, as a UNet's cross-attention: writing out the
    joint softmax (image and text keys) for every layer doubled the step time (1.37 s against
    0.62 s at batch 32); the loss only compares each token's mass inside and outside its mask,
    which the per-pixel share of the text in the joint softmax rescales but does not move.
    Training only: the library records through `backbone.joint_attention`.
    """

    def __init__(self, store: list[torch.Tensor]) -> None:
        super().__init__()
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("JointGroundingProcessor needs the text stream (SD3 joint blocks).")
        b, n, _ = hidden_states.shape
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        cq = split(attn.add_q_proj(encoder_hidden_states))
        ck = split(attn.add_k_proj(encoder_hidden_states))
        cv = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        # image queries over the text keys only: (B, H, N, T), 5x smaller than the joint matrix
        text_probs = torch.softmax(q @ ck.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        self.store.append(text_probs.mean(1))
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
        image, text = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


@contextmanager
def joint_grounding(transformer) -> Iterator[list[torch.Tensor]]:
    """Install `JointGroundingProcessor` on every joint attention layer; restore in ``finally``."""
    original = dict(transformer.attn_processors)
    store: list[torch.Tensor] = []
    transformer.set_attn_processor({k: JointGroundingProcessor(store) for k in original})
    try:
        yield store
    finally:
        transformer.set_attn_processor(original)


class MMDiTState:
    """Everything a run resumes from: the models, their EMA copies, the optimizer, the
    generator, the step and the loss history (``<out>/checkpoint.pt``)."""

    def __init__(self, config: MMDiTTrainConfig, modules: dict[str, torch.nn.Module]) -> None:
        self.config, self.modules = config, modules
        self.params = [p for m in modules.values() for p in m.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + 7)
        self.step, self.seconds, self.losses = 0, 0.0, []

    @property
    def path(self) -> Path:
        return Path(self.config.out) / "checkpoint.pt"

    def update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)

    def save(self) -> None:
        data = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "seconds": self.seconds,
            "losses": self.losses,
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(self.path)

    def load(self) -> bool:
        """Resume from the checkpoint if there is one; returns whether there was."""
        if not self.path.exists():
            return False
        data = torch.load(self.path, weights_only=False)
        for k, m in self.modules.items():
            m.load_state_dict(data["modules"][k])
        with torch.no_grad():
            for e, saved in zip(self.ema, data["ema"], strict=True):
                e.copy_(saved)
        self.optimizer.load_state_dict(data["optimizer"])
        self.generator.set_state(data["generator"])
        self.step, self.seconds, self.losses = data["step"], data["seconds"], data["losses"]
        return True

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights in (for export), the trained ones back in ``finally``."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)


def axis_ids(pipe, captions: list[str]) -> torch.Tensor:
    """Token ids of the whole text axis, CLIP part then T5 part: (B, 2 * text_tokens) int64."""
    parts = []
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_3):
        parts.append(
            tokenizer(
                captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
        )  # fmt: skip
    return torch.cat(parts, dim=1)


def train_mmdit(config: MMDiTTrainConfig, pipe, latents, labels: np.ndarray, captions: list[str]) -> MMDiTState:
    """Train ``pipe``'s transformer and text encoders (resumable); returns the final state.

    Args:
        config: hyperparameters (`steps` is the total, resumed steps included).
        pipe: a ``StableDiffusion3Pipeline`` of fresh (or resumed) parts; its ``encode_prompt``
            is the one the backbone uses, so training and inference read the same text axis.
        latents: the pool's VAE posterior (mean, std), float16 (N, C, h, w) each, unscaled.
        labels: uint8 (N, S, S) class ids of the scenes.
        captions: N captions.
    """
    modules = {
        "transformer": pipe.transformer, "text_encoder": pipe.text_encoder,
        "text_encoder_2": pipe.text_encoder_2, "text_encoder_3": pipe.text_encoder_3,
    }  # fmt: skip
    state = MMDiTState(config, modules)
    if state.load():
        logger.info("resumed at step %d", state.step)
    class_ids = [pipe.tokenizer.convert_tokens_to_ids(name + "</w>") for name in CLASS_NAMES]
    scale, gen = float(pipe.vae.config.scaling_factor), state.generator
    mean, std = latents
    for m in modules.values():
        m.train()
    last_ckpt, window, g_window = time.time(), [], []
    while state.step < config.steps:
        t0 = time.time()
        idx = torch.randint(0, len(captions), (config.batch_size,), generator=gen)
        z0 = (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=gen)) * scale
        text = [shuffle_phrases(captions[i], gen) for i in idx.tolist()]
        drop = (torch.rand(config.batch_size, generator=gen) < config.caption_dropout).tolist()
        text = ["" if d else c for c, d in zip(text, drop, strict=True)]
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=text, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            max_sequence_length=config.model.text_tokens,
        )  # fmt: skip
        noise = torch.randn(z0.shape, generator=gen)
        sigma = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(config.batch_size, generator=gen))
        s = sigma[:, None, None, None]
        zt = s * noise + (1 - s) * z0
        with joint_grounding(pipe.transformer) as maps:
            pred = pipe.transformer(
                hidden_states=zt, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=sigma * 1000
            ).sample
        flow = F.mse_loss(pred, noise - z0)
        loss = flow
        if config.grounding_weight > 0:
            g = token_grounding_loss(
                maps, torch.from_numpy(labels[idx.numpy()]).long(), token_classes(axis_ids(pipe, text), class_ids),
                len(CLASS_NAMES), sample_weight=(sigma < config.grounding_max_sigma).float(),
            )  # fmt: skip
            loss = loss + config.grounding_weight * g
            g_window.append(g.item())
        for group in state.optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (state.step + 1) / max(1, config.warmup_steps))
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.params, 1.0)
        state.optimizer.step()
        state.step += 1
        state.update_ema()
        state.seconds += time.time() - t0
        window.append(flow.item())
        if state.step % config.log_every == 0:
            state.losses.append((state.step, float(np.mean(window)), float(np.mean(g_window)) if g_window else 0.0))
            logger.info(
                "step %d/%d flow %.4f grounding %.4f (%.2fs/step, %.0fs)",
                state.step, config.steps, state.losses[-1][1], state.losses[-1][2], state.seconds / state.step,
                state.seconds,
            )  # fmt: skip
            window.clear()
            g_window.clear()
        if time.time() - last_ckpt > 60 * config.checkpoint_minutes or state.step >= config.steps:
            state.save()
            last_ckpt = time.time()
    return state


def config_dict(config: MMDiTTrainConfig) -> dict:
    """`asdict` of `config`, JSON-ready."""
    return json.loads(json.dumps(asdict(config)))
