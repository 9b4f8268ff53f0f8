"""Resumable training state of the proving-ground UNet stage (weights, EMA, optimizer, RNG)."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from diffuseg.synthetic.model import build_text_encoder, build_unet

__all__ = ["TrainState"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class TrainState:
    """Everything needed to continue the UNet stage bit-for-bit: see `save` / `load_or_create`.

    Attributes:
        unet, text_encoder: the trained modules (float32, CPU).
        ema_unet, ema_text_encoder: exponential moving averages (what is exported).
        optimizer: AdamW over unet + text encoder parameters.
        generator: the torch.Generator that draws batches, noise and timesteps.
        step: optimizer steps done; start_step: step at which this process started.
        seconds: training wall time summed over all sessions.
        losses: [(step, mean unweighted loss over the logging window)].
    """

    def __init__(self, config, unet, text_encoder, ema_unet=None, ema_text_encoder=None) -> None:
        self.config = config
        self.path = Path(config.out) / CHECKPOINT_NAME
        self.unet = unet
        self.text_encoder = text_encoder
        self.ema_unet = ema_unet if ema_unet is not None else copy.deepcopy(unet).requires_grad_(False)
        self.ema_text_encoder = (
            ema_text_encoder if ema_text_encoder is not None else copy.deepcopy(text_encoder).requires_grad_(False)
        )
        self.optimizer = torch.optim.AdamW(
            list(unet.parameters()) + list(text_encoder.parameters()),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + 3)
        self.step = 0
        self.start_step = 0
        self.seconds = 0.0
        self.losses: list[tuple[int, float]] = []
        self.ema_updates = 0
        self.init_from: str | None = None

    @classmethod
    def load_or_create(cls, config, init_from: str | None = None) -> TrainState:
        """Resume from ``<out>/checkpoint.pt`` if present, else start (optionally from weights).

        Args:
            config: `TrainConfig`.
            init_from: an exported pipeline folder (e.g. the shipped ``diffuseg/data/toy``)
                whose EMA UNet and text encoder initialise both the weights and the EMA.
        """
        gen = torch.Generator().manual_seed(config.seed * 1000 + 2)
        path = Path(config.out) / CHECKPOINT_NAME
        if path.exists():
            data = torch.load(path, weights_only=False)
            state = cls(config, build_unet(config.model, gen), build_text_encoder(config.model, gen))
            state.unet.load_state_dict(data["unet"])
            state.text_encoder.load_state_dict(data["text_encoder"])
            state.ema_unet.load_state_dict(data["ema_unet"])
            state.ema_text_encoder.load_state_dict(data["ema_text_encoder"])
            state.optimizer.load_state_dict(data["optimizer"])
            state.generator.set_state(data["generator"])
            state.step = state.start_step = data["step"]
            state.seconds = data["seconds"]
            state.losses = [tuple(x) for x in data["losses"]]
            state.ema_updates = data.get("ema_updates", state.step)
            state.init_from = data.get("init_from")
            logger.info("resumed from %s at step %d (%.0fs trained)", path, state.step, state.seconds)
            return state
        if init_from is not None:
            from diffusers import UNet2DConditionModel
            from transformers import CLIPTextModel

            unet = UNet2DConditionModel.from_pretrained(init_from, subfolder="unet")
            text_encoder = CLIPTextModel.from_pretrained(init_from, subfolder="text_encoder")
            body = getattr(text_encoder, "text_model", text_encoder)  # transformers 4.x / 5.x
            layers = body.encoder.layers
            if config.model.text_layers < len(layers):
                # Keep the first layers (embeddings, final norm unchanged): a shallower encoder.
                body.encoder.layers = layers[: config.model.text_layers]
                text_encoder.config.num_hidden_layers = config.model.text_layers
            state = cls(config, unet.float(), text_encoder.float())
            state.init_from = str(init_from)
            logger.info("initialised UNet and text encoder from %s", init_from)
            return state
        return cls(config, build_unet(config.model, gen), build_text_encoder(config.model, gen))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- d * ema + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n))."""
        self.ema_updates += 1
        d = min(decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for live, ema in ((self.unet, self.ema_unet), (self.text_encoder, self.ema_text_encoder)):
            ema_params = list(ema.parameters())
            live_params = list(live.parameters())
            torch._foreach_lerp_(ema_params, live_params, 1.0 - d)

    def save(self) -> None:
        """Write the checkpoint atomically (temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(
            {
                "unet": self.unet.state_dict(),
                "text_encoder": self.text_encoder.state_dict(),
                "ema_unet": self.ema_unet.state_dict(),
                "ema_text_encoder": self.ema_text_encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "step": self.step,
                "seconds": self.seconds,
                "losses": self.losses,
                "ema_updates": self.ema_updates,
                "init_from": self.init_from,
                "config": asdict(self.config),
            },
            tmp,
        )
        tmp.replace(self.path)
        logger.info("checkpoint: step %d -> %s", self.step, self.path)
