"""Finding and loading diffusion model components: hub ids, local folders, single files, `toy`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ModelNotFoundError",
    "NotADiffusionModelError",
    "DEFAULT_MODEL",
    "resolve_model",
    "load_folder",
    "load_single_file",
    "toy_model_path",
    "cached_models",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_HUB_PATTERNS = [
    "model_index.json",
    "unet/*.json",
    "unet/*.safetensors",
    "vae/*.json",
    "vae/*.safetensors",
    "text_encoder*/*.json",
    "text_encoder*/*.safetensors",
    "tokenizer*/*",
    "scheduler/*",
]


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local path, in the local cache, nor downloadable."""


class NotADiffusionModelError(ValueError):
    """A path exists but does not hold a diffusers text-to-image model."""


def toy_model_path() -> Path:
    """Folder of the proving-ground model shipped as package data (`--model toy`)."""
    return Path(__file__).resolve().parent.parent / "data" / "toy"


def _missing_model_message(model: str, reason: str) -> str:
    return (
        f"model {model!r} is not available: {reason}\n"
        "Pass --model with a local diffusers folder (e.g. one saved by "
        "`StableDiffusionPipeline.save_pretrained`), a single .safetensors/.ckpt file, a hub id "
        "already in your Hugging Face cache, or `--model toy` for the small model shipped "
        "with diffuseg."
    )


def resolve_model(model: str, local_files_only: bool | None = None) -> Path:
    """Turn `model` into a local path: a folder (diffusers layout) or a single weights file.

    Order: ``"toy"``; an existing local path; the local Hugging Face cache; a download (unless
    `local_files_only` or ``HF_HUB_OFFLINE=1``).

    Raises:
        ModelNotFoundError: with instructions on how to pass `--model`.
    """
    if model == "toy":
        path = toy_model_path()
        if not (path / "unet" / "config.json").is_file():
            raise ModelNotFoundError(
                f"the toy model is missing from the package data ({path}); rebuild it with "
                "`diffuseg train proving-ground` (see docs/proving_ground.md) or reinstall diffuseg."
            )
        return path
    path = Path(os.path.expanduser(model))
    if path.exists():
        return path
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path or model.endswith((".safetensors", ".ckpt")) or model.count("/") != 1:
        raise ModelNotFoundError(_missing_model_message(model, f"no such file or folder: {path}"))
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub ships with diffusers
        raise ModelNotFoundError(_missing_model_message(model, str(e))) from e
    try:
        return Path(snapshot_download(model, local_files_only=True, allow_patterns=_HUB_PATTERNS))
    except Exception as cache_error:  # noqa: BLE001 - any cache miss means "try the network"
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True")
        if offline:
            raise ModelNotFoundError(
                _missing_model_message(model, "not in the local Hugging Face cache (offline mode).")
            ) from cache_error
    try:
        logger.info("downloading %s from the Hugging Face Hub", model)
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001
        raise ModelNotFoundError(
            _missing_model_message(model, f"not cached locally and the download failed ({type(e).__name__}).")
        ) from e


def load_folder(path: Path, torch_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Load the components of a diffusers text-to-image folder (SD 1.x/2.x, SDXL-family).

    Returns:
        A dict with unet, vae, text_encoder, tokenizer, scheduler and, for SDXL-shaped models,
        text_encoder_2 and tokenizer_2.

    Raises:
        NotADiffusionModelError: if the folder lacks a UNet, VAE, text encoder or tokenizer.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index: dict[str, Any] = {}
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
    required = ("unet", "vae", "scheduler")
    missing = [c for c in required if not (path / c / "config.json").is_file()
               and not (path / c / "scheduler_config.json").is_file()]
    has_text = (path / "text_encoder").is_dir() or (path / "text_encoder_2").is_dir()
    if missing or not has_text:
        raise NotADiffusionModelError(
            f"{path} is not a diffusers text-to-image model folder: missing "
            f"{', '.join(missing + ([] if has_text else ['text_encoder']))} (expected subfolders "
            "unet/, vae/, text_encoder/, tokenizer/, scheduler/ as written by save_pretrained)."
        )
    kw: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", **kw),
        "scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True),
    }
    if (path / "text_encoder").is_dir():
        parts["text_encoder"] = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    if (path / "text_encoder_2").is_dir():
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder="text_encoder_2", **kw
        )
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True)
    if index.get("_class_name"):
        logger.debug("loaded %s components from %s", index["_class_name"], path)
    return parts


def load_single_file(
    path: Path, config: str | None = None, torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None
) -> dict[str, Any]:
    """Load an original-format (LDM) `.safetensors` / `.ckpt` checkpoint with diffusers.

    Args:
        path: the checkpoint file.
        config: a diffusers folder or hub id whose configs describe the checkpoint (needed
            offline; diffusers otherwise fetches them from the Hub).

    Raises:
        NotADiffusionModelError: if diffusers cannot interpret the file.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys: set[str] = set()
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
        except Exception as e:  # noqa: BLE001
            raise NotADiffusionModelError(f"{path} is not a readable safetensors file: {e}") from e
    is_xl = any(k.startswith("conditioner.embedders.1") for k in keys)
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    kw: dict[str, Any] = {}
    if config is not None:
        kw["config"] = config
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    if local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1":
        kw["local_files_only"] = True
    try:
        pipe = cls.from_single_file(str(path), **kw)
    except Exception as e:  # noqa: BLE001
        raise NotADiffusionModelError(
            f"cannot load {path} as a Stable Diffusion checkpoint ({type(e).__name__}: {e}). "
            "Offline, pass the matching diffusers config folder with `config=`."
        ) from e
    names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


def cached_models() -> list[str]:
    """Hub ids of text-to-image models present in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder yet
        return []
    out = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if any(f.file_name == "model_index.json" for f in rev.files):
                out.append(repo.repo_id)
                break
    return sorted(out)
