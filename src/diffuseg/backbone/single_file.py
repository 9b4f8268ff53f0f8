"""Loading an original-format (LDM / CompVis / A1111) single-file checkpoint with diffusers.

Also what every single-file loader shares: `read_checkpoint` (a file's state dict, read lazily,
with one teaching error for an unreadable or truncated file), `transformer_pipeline` (which
diffusion-transformer family an original-layout file holds; those load through
`single_file_mmdit`) and `meta_parameters` (weights diffusers left unloaded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from .loading import ModelNotFoundError, NotADiffusionModelError

__all__ = ["load_single_file", "read_checkpoint", "transformer_pipeline", "meta_parameters", "TRANSFORMER_BLOCKS"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Original-layout diffusion-transformer files: the block prefix (after an optional
#: ``model.diffusion_model.``) that marks a family -> the diffusers pipeline class of that family.
TRANSFORMER_BLOCKS = {"joint_blocks.": "StableDiffusion3Pipeline", "double_blocks.": "FluxPipeline"}
_PREFIX = "model.diffusion_model."

_HOW_TO_CONFIG = (
    "Pass `config` naming the diffusers model this checkpoint was made from: a local "
    "diffusers folder (a `save_pretrained` folder; its model_index.json, */config.json, tokenizer and "
    "scheduler files are enough) or a hub id in your Hugging Face cache, e.g. "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 (SD 1.x), stabilityai/stable-diffusion-2-1 (SD 2.x), "
    "stabilityai/stable-diffusion-xl-base-1.0 (SDXL)."
)

#: What a pipeline built from a single file hands over.
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")


def load_single_file(
    path: Path, config: str | None = None, torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None
) -> dict[str, Any]:
    """Load an original-format (LDM / CompVis / A1111) `.safetensors` / `.ckpt` checkpoint with diffusers.

    The file must hold the whole model under the original prefixes: the UNet under
    ``model.diffusion_model.``, the VAE under ``first_stage_model.`` (or ``vae.``) and the text
    encoder(s) under ``cond_stage_model.`` (SD 1.x/2.x) or ``conditioner.embedders.`` (SDXL).
    Architectures are not stored in such files, so diffusers needs the diffusers configs of the
    same model family: `config`, else the hub id diffusers infers from the keys, which must then
    be in the local Hugging Face cache when offline. Offline (``local_files_only`` or
    ``HF_HUB_OFFLINE``) nothing is downloaded: diffusers' own fallback to the network is bypassed.

    Args:
        path: the checkpoint file.
        config: a local diffusers folder (``save_pretrained`` output, or just its ``.json`` /
            tokenizer files) or a hub id whose configs describe the checkpoint.
        torch_dtype: load weights in this dtype.
        local_files_only: never touch the network (also implied by ``HF_HUB_OFFLINE=1``).

    Returns:
        unet, vae, text_encoder, tokenizer, scheduler and, for SDXL files, text_encoder_2 and
        tokenizer_2.

    Raises:
        NotADiffusionModelError: the file is unreadable, is not an SD 1.x/2.x/SDXL checkpoint,
            lacks weights the config needs, or does not match `config`.
        ModelNotFoundError: the configs are neither a local folder nor cached, and we are offline.
    """
    offline = bool(local_files_only) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    keys, inferred = _read_keys(path, config)
    is_xl = _check_layout(path, keys)
    config_ref = _resolve_configs(path, config, inferred, is_xl, offline)
    pipe = _load_pipeline(path, is_xl, config_ref, offline, torch_dtype)
    return _components(pipe, path, config_ref)


class _LazySafetensors(Mapping):
    """Read-only view of an open safetensors file; tensors are read only when looked up."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._keys = list(handle.keys())
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _keys_and_inferred(state: Mapping, config: str | None) -> tuple[set[str], str | None]:
    """The file's keys, and (without `config`) the hub id diffusers would take the configs from."""
    keys = set(state.keys())
    inferred = None
    if config is None and any(k.startswith("model.diffusion_model.") for k in keys):
        from diffusers.loaders.single_file_utils import fetch_diffusers_config

        try:
            inferred = fetch_diffusers_config(state)["pretrained_model_name_or_path"]
        except Exception:  # noqa: BLE001 - the key checks below give the better message
            inferred = None
    return keys, inferred


def _read_keys(path: Path, config: str | None) -> tuple[set[str], str | None]:
    """1. Read the keys (cheaply: safetensors lazily, zip-format .ckpt memory-mapped)."""
    return read_checkpoint(path, lambda state: _keys_and_inferred(state, config))


def read_checkpoint(path: Path, peek: Callable[[Mapping[str, torch.Tensor]], _T]) -> _T:
    """What `peek` makes of the state dict in a ``.safetensors`` / ``.ckpt`` file, read cheaply.

    A ``.safetensors`` file is opened lazily (a tensor is read only when `peek` looks it up), a
    zip-format ``.ckpt`` memory-mapped with ``weights_only=True``; a ``state_dict`` entry is
    unwrapped.

    Returns:
        `peek`'s result (e.g. ``set`` for the keys).

    Raises:
        NotADiffusionModelError: naming `path`, if it is unreadable, truncated, not a checkpoint
            or not a state dict.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return peek(_LazySafetensors(f))
        import zipfile

        state: Any = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        while isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        result = peek(state)
        del state
        return result
    except Exception as e:  # noqa: BLE001
        kind = "safetensors" if path.suffix.lower() == ".safetensors" else "PyTorch"
        first_line = (str(e).strip().splitlines() or [""])[0]
        extra = (
            " It pickles more than tensors, which is not loaded for safety (diffusers loads .ckpt "
            "with weights_only=True too); if you trust it, re-save it as .safetensors."
            if "weights only" in str(e).lower()
            else ""
        )
        raise NotADiffusionModelError(
            f"{path} is not a readable {kind} checkpoint ({type(e).__name__}: {first_line}).{extra} Pass an "
            "intact original-format .safetensors/.ckpt checkpoint (Stable Diffusion, SD3, FLUX.1), or a "
            "diffusers folder."
        ) from e


def transformer_pipeline(keys: Iterable[str]) -> str | None:
    """The diffusers pipeline class (`TRANSFORMER_BLOCKS`) of the diffusion transformer whose
    original-layout weights `keys` hold (``joint_blocks.*``: SD3 / SD3.5, ``double_blocks.*``:
    FLUX.1, with or without the ``model.diffusion_model.`` prefix), or None."""
    for key in keys:
        key = key.removeprefix(_PREFIX)
        for block, pipeline in TRANSFORMER_BLOCKS.items():
            if key.startswith(block):
                return pipeline
    return None


def meta_parameters(module: torch.nn.Module) -> list[str]:
    """Names of `module`'s parameters still on the meta device: the weights diffusers found no
    tensor for (it leaves them so without complaint)."""
    return [name for name, tensor in module.named_parameters() if tensor.is_meta]


def _check_layout(path: Path, keys: set[str]) -> bool:
    """2. Is it a whole SD 1.x/2.x/SDXL checkpoint in the original layout? Returns whether it
    is an SDXL-family one."""

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if "model.diffusion_model.input_blocks.0.0.weight" not in keys:
        pipeline = transformer_pipeline(keys)
        if pipeline is not None:
            raise NotADiffusionModelError(
                f"{path} holds a diffusion transformer (the one of a {pipeline}), not a Stable Diffusion "
                f"UNet: load it with `diffuseg.backbone.load_backbone(model, config=FOLDER)`, FOLDER a diffusers "
                f"{pipeline} folder for the VAE and text encoders (--model-config on the command line)."
            )
        sample = ", ".join(sorted(keys)[:5]) or "no tensors at all"
        raise NotADiffusionModelError(
            f"{path} is not an original-format Stable Diffusion 1.x/2.x/SDXL checkpoint: it has no UNet "
            f"weights under `model.diffusion_model.input_blocks.*` ({len(keys)} tensors, e.g. {sample}). "
            "Pass a full LDM/A1111-style checkpoint (UNet + VAE + text encoder in one file), or, for "
            "diffusers-format weights, the diffusers folder itself."
        )
    if not has("first_stage_model.", "vae."):
        raise NotADiffusionModelError(
            f"{path} has no VAE weights (`first_stage_model.*`): diffuseg needs the UNet, VAE and text "
            "encoder in one file. Save the checkpoint with its VAE baked in, or convert it to a diffusers "
            "folder and pass that folder."
        )
    is_xl = has("conditioner.")  # SDXL-family files keep their text encoders under conditioner.embedders.*
    if not has("cond_stage_model.", "conditioner.embedders."):
        logger.warning(
            "%s has no text encoder weights; diffusers takes them from the config folder if it "
            "holds weights, else loading fails",
            path,
        )
    return is_xl


def _resolve_configs(path: Path, config: str | None, inferred: str | None, is_xl: bool, offline: bool) -> str:
    """3. Resolve the configs to a local folder (or, online, a hub id diffusers downloads)."""
    source = config if config is not None else inferred
    if source is None:
        raise ModelNotFoundError(f"cannot tell which diffusers configs describe {path}. {_HOW_TO_CONFIG}")
    local = Path(os.path.expanduser(source))
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") != 1 or "\\" in source
    if local.is_dir():
        if not (local / "model_index.json").is_file() or not (local / "unet" / "config.json").is_file():
            raise NotADiffusionModelError(
                f"config folder {local} is not a diffusers model folder (it needs model_index.json, "
                f"unet/config.json, vae/config.json, text_encoder/config.json, tokenizer/, scheduler/). "
                f"{_HOW_TO_CONFIG}"
            )
        cls_name = json.loads((local / "model_index.json").read_text()).get("_class_name", "")
        if ("XL" in cls_name) != is_xl:
            raise NotADiffusionModelError(
                f"config folder {local} describes a {cls_name or 'model of unknown class'}, but {path} is "
                f"{'an SDXL' if is_xl else 'an SD 1.x/2.x'} checkpoint. {_HOW_TO_CONFIG}"
            )
        return str(local)
    if config is not None and local.exists():
        raise NotADiffusionModelError(f"config {source!r} is a file, not a diffusers folder. {_HOW_TO_CONFIG}")
    if config is not None and looks_like_path:
        raise ModelNotFoundError(f"config folder {source!r} not found. {_HOW_TO_CONFIG}")
    from huggingface_hub import snapshot_download

    what = f"config {source!r} is" if config is not None else f"{source!r}, the configs diffusers infers for it, are"
    try:
        return snapshot_download(
            source, local_files_only=True, allow_patterns=["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]
        )
    except Exception as e:  # noqa: BLE001 - a cache miss: download later, or fail offline
        if offline:
            raise ModelNotFoundError(
                f"cannot load {path} offline: {what} not in the local Hugging Face cache. {_HOW_TO_CONFIG}"
            ) from e
        return source


def _load_pipeline(path: Path, is_xl: bool, config_ref: str, offline: bool, torch_dtype: torch.dtype | None) -> Any:
    """4. Load the pipeline with diffusers; its failures explained."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    kw: dict[str, Any] = {"config": config_ref, "local_files_only": offline}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    try:
        return cls.from_single_file(str(path), **kw)
    except Exception as e:  # noqa: BLE001
        text = str(e).strip()
        family = "SDXL" if is_xl else "Stable Diffusion 1.x/2.x"
        if "meta tensor" in text or "expected shape" in text or "size mismatch" in text:
            why = (
                f"its weights do not fit the configs from {config_ref} (tensors missing or of other shapes): "
                "the checkpoint is partial, or the configs are of another architecture."
            )
        elif type(e).__name__ == "SingleFileComponentError":
            why = (
                f"a component's weights are neither in the file nor in the config folder {config_ref} "
                "(see below); diffuseg needs the UNet, VAE and text encoder in the file."
            )
        else:
            why = f"diffusers could not build a {family} pipeline from it."
        raise NotADiffusionModelError(
            f"cannot load {path}: {why} {_HOW_TO_CONFIG}\n(diffusers: {type(e).__name__}: {text})"
        ) from e


def _components(pipe: Any, path: Path, config_ref: str) -> dict[str, Any]:
    """5. The pipeline's components, refusing modules diffusers left without weights."""
    parts = {n: getattr(pipe, n) for n in _COMPONENTS if getattr(pipe, n, None) is not None}
    # diffusers leaves parameters it found no tensor for on the meta device (text encoders silently).
    for name, module in parts.items():
        if isinstance(module, torch.nn.Module):
            empty = meta_parameters(module)
            if empty:
                raise NotADiffusionModelError(
                    f"{path} lacks {len(empty)} {name} weight(s) that the configs from {config_ref} require "
                    f"(e.g. {', '.join(empty[:3])}): the checkpoint is partial or of another architecture. "
                    f"{_HOW_TO_CONFIG}"
                )
    return parts
