"""Fine-tune a mask-denoising UNet (Seg-diffusion) from a text-to-image base model.

Each training row is one (image, class present in it): the image latent, the binary mask of that
class as a latent (`encode_masks`), and the class prompt's text states; the widened UNet learns
to denoise the mask latent (`denoising_loss`). Images get a random square crop of 70-100 % of
their short side (aspect kept) resized to the model input, labels with nearest neighbour.

A run folder holds ``checkpoint/`` (the mask UNet + record, `diffuseg.segdiffusion.checkpoint`),
``trainer.pt`` (optimizer, step, RNG and EMA state, and with EMA the trained weights, since the
checkpoint then holds their average; written with the checkpoint), ``log.jsonl``
(loss per step, validation mIoU) and ``curves.png``. ``resume=True`` continues from the last
checkpoint with the same config (only `steps` and how often it saves or validates may change),
so an interrupted run loses at most `checkpoint_every` steps and continues the same loss curve.
`check_out` says before any work whether a run can start (or resume) in a folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..outputs import folder_problem
from ..plan import check_positive
from .base import require_unet
from .checkpoint import RECORD, load_checkpoint, read_record, save_checkpoint
from .masks import encode_masks
from .model import widen_conv_in
from .objective import denoising_loss

if TYPE_CHECKING:
    from ..backbone.backbone import DiffusionBackbone

__all__ = ["SegTrainConfig", "train", "check_out", "run_step", "ConfigMismatchError"]

logger = logging.getLogger(__name__)

#: Learning rates when `lr` is None: the reference's 3e-5 (``scripts/train.sh``) for SD models;
#: the toy model (a small UNet trained from scratch here) learns the new task 10x faster.
DEFAULT_LR = {"toy": 3e-4}
_REFERENCE_LR = 3e-5
#: Learning-rate schedules: constant (the reference), or cosine decay to `_FINAL_LR_RATIO` x lr.
LR_SCHEDULES = ("constant", "cosine")
_FINAL_LR_RATIO = 0.1
#: Mixed precision of the UNet's forward pass (weights and optimizer stay float32).
MIXED_PRECISIONS = ("no", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Crops in a row without a pixel of any class before the dataset is refused.
_MAX_EMPTY_CROPS = 200


class ConfigMismatchError(ValueError):
    """`resume` with a config that differs from the run's."""


@dataclass(frozen=True)
class SegTrainConfig:
    """Settings of a Seg-diffusion training run.

    Attributes:
        steps: optimizer steps in total (a resumed run may raise it).
        batch_size: rows (image, class) per micro-batch.
        grad_accumulation: micro-batches per optimizer step.
        lr: AdamW learning rate; None = 3e-5 (the reference) or the family's `DEFAULT_LR`.
        lr_schedule: "constant" (the reference) or "cosine": lr x (0.1 + 0.9 (1 + cos(pi s / steps)) / 2)
            at step s, a function of the step alone so a resumed run follows the same curve.
        clip: gradient-norm clipping (the reference's 1.0).
        size: training input side; None = the base model's native size.
        crop_scale: (min, max) side of the random square crop as a fraction of the image's
            short side, resized to `size`. Crops smaller than `size` / (inference side) teach
            the scale that inference at a higher processing resolution will see.
        template: the class prompt (the reference's "a photo of a {class}").
        pyramid_levels, pyramid_discount: multi-resolution noise (the reference's 6 and 0.3).
        checkpoint_every: steps between checkpoints (and at the end).
        validate_every: steps between validations (0 = none); `validate` is called with the model.
        ema_decay: decay of an exponential moving average of the weights, or None.
        mixed_precision: "no", "fp16" (with a gradient scaler) or "bf16" autocast of the
            UNet's forward pass; weights, gradients and the optimizer stay float32.
        gradient_checkpointing: recompute activations in the backward pass (diffusers'
            ``enable_gradient_checkpointing``): less memory, about a third more time.
        seed: seed of the run's generator (data order, crops, t and noise).
    """

    steps: int = 2000
    batch_size: int = 8
    grad_accumulation: int = 1
    lr: float | None = None
    lr_schedule: str = field(default="constant", metadata={"choices": LR_SCHEDULES})
    clip: float = 1.0
    size: int | None = None
    crop_scale: tuple[float, float] = (0.7, 1.0)
    template: str = "a photo of a {class}"
    pyramid_levels: int = 6
    pyramid_discount: float = 0.3
    checkpoint_every: int = 200
    validate_every: int = 0
    ema_decay: float | None = None
    mixed_precision: str = field(default="no", metadata={"choices": MIXED_PRECISIONS})
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accumulation", "checkpoint_every"):
            check_positive(getattr(self, name), name, integer=True)
        check_positive(self.validate_every, "validate_every", integer=True, allow_zero=True)
        check_positive(self.lr, "lr", allow_none=True)
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        check_positive(self.clip, "clip")
        check_positive(self.size, "size", integer=True, allow_none=True)
        lo_hi = self.crop_scale
        if (
            not isinstance(lo_hi, (tuple, list))
            or len(lo_hi) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lo_hi)
            or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0
        ):
            raise ValueError(f"`crop_scale` must be (min, max) with 0 < min <= max <= 1, got {lo_hi!r}.")
        object.__setattr__(self, "crop_scale", (float(lo_hi[0]), float(lo_hi[1])))
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) or None, got {self.ema_decay!r}.")


def _crop(sample: Any, size: int, scale: tuple[float, float], gen: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """A random square crop (`scale` of the short side) resized to `size`: image bilinear, label nearest."""
    image = torch.from_numpy(np.asarray(sample.image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    label = np.asarray(sample.label)
    h, w = label.shape
    lo, hi = scale
    side = max(1, int(min(h, w) * (lo + (hi - lo) * float(torch.rand((), generator=gen)))))
    top = int(torch.randint(0, h - side + 1, (), generator=gen))
    left = int(torch.randint(0, w - side + 1, (), generator=gen))
    image = image[:, top : top + side, left : left + side]
    label = label[top : top + side, left : left + side]
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    rows = np.minimum((np.arange(size) * side / size).astype(int), side - 1)
    return image.clamp(0, 1), label[rows[:, None], rows[None, :]]


def _batch(backbone: DiffusionBackbone, dataset: Any, config: SegTrainConfig, size: int, gen: torch.Generator) -> tuple:
    """(image latents, mask latents, text states, added_cond) of `batch_size` random (image,
    class) rows, float32 on the backbone's device.

    Raises:
        ValueError: if `_MAX_EMPTY_CROPS` crops in a row hold no pixel of the dataset's classes.
    """
    from ..labeling.spans import fill_template

    images, masks, prompts = [], [], []
    names = list(dataset.class_names)
    empty = 0
    while len(images) < config.batch_size:
        sample = dataset[int(torch.randint(0, len(dataset), (), generator=gen))]
        image, label = _crop(sample, size, config.crop_scale, gen)
        present = [int(c) for c in np.unique(label) if 0 <= int(c) < len(names)]
        if not present:
            empty += 1
            if empty >= _MAX_EMPTY_CROPS:
                raise ValueError(
                    f"`dataset` {getattr(dataset, 'name', type(dataset).__name__)!r}: {empty} random crops in a row "
                    f"hold no pixel of any of its {len(names)} classes (labels 0..{len(names) - 1}, 255 = ignore); "
                    "is it the right dataset and split?"
                )
            continue
        empty = 0
        c = present[int(torch.randint(0, len(present), (), generator=gen))]
        images.append(image)
        masks.append(torch.from_numpy(label == c))
        prompts.append(fill_template(config.template, names[c]))
    with torch.no_grad():
        pixels = torch.stack(images).to(backbone.device)
        z_image = backbone.encode_images(pixels, "mean").float()
        z_mask = encode_masks(backbone, torch.stack(masks).to(backbone.device)).float()
        text = backbone.encode_prompts(prompts)
        added = backbone.added_cond(text, (size, size))
    if added is not None:
        added = {k: v.float() for k, v in added.items()}
    return z_image, z_mask, text.embeds.float(), added


def _lr_factor(config: SegTrainConfig, step: int) -> float:
    """The schedule's multiplier of the base lr at `step` (0-based)."""
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(step / config.steps, 1.0)
    return _FINAL_LR_RATIO + (1 - _FINAL_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def _state_path(out: Path) -> Path:
    return out / "trainer.pt"


def _record(config: SegTrainConfig, backbone: DiffusionBackbone, step: int) -> dict[str, Any]:
    return {
        "base_model": backbone.name,
        "family": backbone.family,
        "prediction_type": backbone.scheduler.config.prediction_type,
        "template": config.template,
        "step": step,
        "train_config": dataclasses.asdict(config),
    }


#: Settings a resumed run may change: how long it runs and how often it saves and validates.
_RUN_SETTINGS = ("steps", "checkpoint_every", "validate_every")


def _check_resume(saved: dict[str, Any], config: SegTrainConfig) -> None:
    ours = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples compare as the record's lists
    # a setting added after the run was saved had its default value there
    defaults = json.loads(json.dumps(dataclasses.asdict(SegTrainConfig())))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    diff = {k: (saved.get(k), v) for k, v in ours.items() if k not in _RUN_SETTINGS and saved.get(k) != v}
    if diff:
        listing = ", ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigMismatchError(f"`resume` with a different config: {listing}.")


def run_step(out: str | os.PathLike) -> int | None:
    """The step of the run in `out` (its last checkpoint's), or None if `out` holds no run.

    Raises:
        CheckpointError: a damaged checkpoint record.
    """
    ckpt = Path(out) / "checkpoint"
    if not (ckpt / RECORD).exists():
        return None
    return int(read_record(ckpt).get("step", 0))


def check_out(out: str | os.PathLike, *, resume: bool = False, steps: int | None = None) -> int | None:
    """Check, before any work, that a run can start in `out` (or with `resume` continue there,
    to `steps` in total); returns the step of the run to resume (None for a new run).

    Raises:
        ValueError: naming `out` (empty, a file, a folder that cannot be created or written;
            with `resume`, no run there or one without its trainer state) or `steps` (below
            the step the run to resume is at: a run does not go back).
        FileExistsError: if `out` holds a run and `resume` is False.
    """
    problem = folder_problem(out)
    if problem:
        raise ValueError(problem)
    step = run_step(out)
    if not resume:
        if step is not None:
            raise FileExistsError(f"{out} holds a run; pass `resume=True` to continue it or choose another `out`.")
        return None
    if step is None:
        raise ValueError(
            f"`out` {out} holds no run to resume (no checkpoint/{RECORD}); drop `resume=True` to start one there."
        )
    if not _state_path(Path(out)).is_file():
        raise ValueError(
            f"`out` {out} holds a checkpoint but not its {_state_path(Path(out)).name} (optimizer, step and "
            "generator state), so it cannot be resumed; start a new run in another `out`."
        )
    if steps is not None and steps < step:
        raise ValueError(
            f"`steps` {steps} is below step {step}, where the run in {out} is already: a run does not go back; "
            f"give `steps` > {step} to train on (its checkpoint is the model at step {step})."
        )
    return step


def _start(
    backbone: DiffusionBackbone, config: SegTrainConfig, out: Path, resume: bool
) -> tuple[Any, dict[str, Any] | None]:
    """The UNet to train (widened from the base's, or the run's on `resume`) and, on `resume`,
    the trainer state saved with the run's last checkpoint (None for a new run).

    Raises:
        ConfigMismatchError: on `resume` with another config.
    """
    if not resume:
        import copy

        return widen_conv_in(copy.deepcopy(backbone.unet)).float().train().requires_grad_(True), None
    ckpt = out / "checkpoint"
    _check_resume(read_record(ckpt).get("train_config", {}), config)
    unet, _ = load_checkpoint(ckpt, backbone.device, torch.float32)
    state = torch.load(_state_path(out), map_location="cpu", weights_only=False)
    if state.get("unet") is not None:  # with EMA the checkpoint holds the average, not the trained weights
        unet.load_state_dict(state["unet"])
    return unet.train().requires_grad_(True), state


def _optimizer(
    unet: Any, config: SegTrainConfig, lr: float, device: torch.device, state: dict[str, Any] | None
) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor] | None, torch.amp.GradScaler]:
    """AdamW, the EMA weights (None without `ema_decay`) and the gradient scaler, restored from
    the trainer `state` of a resumed run."""
    scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    ema = None
    if config.ema_decay is not None:
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema = {k: v.to(device) for k, v in state["ema"].items()}
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    return opt, ema, scaler


def _optimizer_step(
    unet: Any,
    opt: Any,
    scaler: Any,
    backbone: DiffusionBackbone,
    dataset: Any,
    config: SegTrainConfig,
    size: int,
    gen: Any,
) -> float:
    """One optimizer step over `grad_accumulation` micro-batches; returns their mean loss."""
    device = torch.device(backbone.device)
    autocast_dtype = _AUTOCAST_DTYPES.get(config.mixed_precision)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(config.grad_accumulation):
        z_image, z_mask, text, added = _batch(backbone, dataset, config, size, gen)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = denoising_loss(
                unet, backbone.scheduler, z_image, z_mask, text, gen,
                config.pyramid_levels, config.pyramid_discount, added,
            )  # fmt: skip
        scaler.scale(loss / config.grad_accumulation).backward()
        total += float(loss.detach()) / config.grad_accumulation
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(unet.parameters(), config.clip)
    scaler.step(opt)
    scaler.update()
    return total


def train(
    backbone: DiffusionBackbone,
    dataset: Any,
    config: SegTrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    validate: Any = None,
    progress: bool = False,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune `backbone`'s UNet (widened) on `dataset`; returns the log records of this call.

    Args:
        backbone: the base `DiffusionBackbone` (its VAE and text encoder stay frozen); any
            other backbone is refused (`require_unet`).
        dataset: any `SegmentationDataset` (labels int (H, W), 255 = ignore).
        config: training settings.
        out: run folder.
        resume: continue the run in `out` (its config must match, `steps` aside).
        validate: ``validate(mask_model) -> float`` (held-out mIoU), called every
            `validate_every` steps and at the end.
        stop_after: stop after this many steps of this call (tests simulate an interruption).

    Raises:
        FileExistsError: if `out` holds a run and `resume` is False.
        ValueError: a backbone that is not a UNet model, a bad `out`, or `steps` below the step
            of the run to resume (`check_out`).
        ConfigMismatchError: on `resume` with another config.
    """
    from tqdm.auto import tqdm

    from .sampler import MaskModel

    backbone = require_unet(backbone)
    done = check_out(out, resume=resume, steps=config.steps)  # before Path(""), which is "."
    out = Path(out)
    ckpt = out / "checkpoint"
    size = config.size or backbone.native_size
    gen = torch.Generator().manual_seed(config.seed)
    unet, state = _start(backbone, config, out, resume)
    step = int(state["step"]) if state is not None else 0
    if state is not None:
        gen.set_state(state["generator"])
    if done == config.steps:
        logger.info("the run in %s is already at step %d = `steps`: no step to train", out, done)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    device = torch.device(backbone.device)
    lr = config.lr or DEFAULT_LR.get(backbone.family, _REFERENCE_LR)
    opt, ema, scaler = _optimizer(unet, config, lr, device, state)
    log_path = out / "log.jsonl"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`out` {out} cannot be created: {e.strerror or e}.") from None
    if resume and log_path.exists():  # drop the steps after the checkpoint: they are redone
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept))
    records: list[dict[str, Any]] = []
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="segdiffusion", unit="step")

    def weights() -> Any:
        """The model to save and validate: the EMA weights when there are any."""
        if ema is None:
            return unet
        import copy

        model = copy.deepcopy(unet)
        model.load_state_dict(ema)
        return model

    def save() -> None:
        save_checkpoint(ckpt, weights(), _record(config, backbone, step))
        tmp = _state_path(out).with_suffix(".tmp")
        torch.save({"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(), "ema": ema,
                    "unet": unet.state_dict() if ema is not None else None,
                    "scaler": scaler.state_dict()}, tmp)  # fmt: skip
        os.replace(tmp, _state_path(out))

    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(config, step)
        total = _optimizer_step(unet, opt, scaler, backbone, dataset, config, size, gen)
        step += 1
        if ema is not None:
            with torch.no_grad():
                for k, v in unet.state_dict().items():
                    ema[k].mul_(config.ema_decay).add_(v.detach(), alpha=1 - config.ema_decay)
        rec: dict[str, Any] = {"step": step, "loss": round(total, 6)}
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
        if (
            validate is not None
            and config.validate_every
            and (step % config.validate_every == 0 or step == config.steps)
        ):
            model = weights().eval()
            rec["val_miou"] = round(float(validate(MaskModel(model, _record(config, backbone, step)))), 6)
            unet.train()
        records.append(rec)
        with log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
    bar.close()
    if log_path.exists():
        from .curves import write_curves

        write_curves(log_path, out / "curves.png")
    return records
