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
    "TOY_MODELS",
    "toy_model_path",
    "cached_models",
    "read_json_file",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The files of a hub model that loading it needs.
HUB_PATTERNS = [
    "model_index.json",
    "unet/*.json",
    "unet/*.safetensors",
    "transformer/*.json",  # diffusion transformers (SD3, SD3.5, FLUX)
    "transformer/*.safetensors",
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


#: The proving-ground models shipped as package data: name -> the ``diffuseg train`` target
#: that rebuilds it ("toy": the UNet, "toy-mmdit": the SD3-shaped diffusion transformer).
TOY_MODELS = {"toy": "proving-ground", "toy-mmdit": "toy-mmdit"}


def toy_model_path(name: str = "toy") -> Path:
    """Folder of a proving-ground model shipped as package data (`--model toy` / `toy-mmdit`)."""
    return Path(__file__).resolve().parent.parent / "data" / name


def _missing_model_message(model: str, reason: str) -> str:
    return (
        f"model {model!r} is not available: {reason}\n"
        "Give `model` a local diffusers folder (e.g. one saved by "
        "StableDiffusionPipeline.save_pretrained), a single .safetensors/.ckpt file, a hub id "
        "already in your Hugging Face cache, or 'toy' / 'toy-mmdit' for the small models shipped with diffuseg."
    )


def resolve_model(model: str, local_files_only: bool | None = None, *, patterns: list[str] | None = None) -> Path:
    """Turn `model` into a local path: a folder (diffusers layout) or a single weights file.

    Order: ``"toy"``; an existing local path; the local Hugging Face cache; a download (unless
    `local_files_only` or ``HF_HUB_OFFLINE=1``) of the files matching `patterns` (default: the
    configs, tokenizers and ``.safetensors`` weights of every pipeline component).

    Raises:
        ModelNotFoundError: with instructions on how to pass `--model`.
    """
    if model in TOY_MODELS:
        path = toy_model_path(model)
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the {model} model is missing from the package data ({path}); rebuild it with "
                f"`diffuseg train {TOY_MODELS[model]}` (see docs/proving_ground.md) or reinstall diffuseg."
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
    patterns = HUB_PATTERNS if patterns is None else patterns
    try:
        return Path(snapshot_download(model, local_files_only=True, allow_patterns=patterns))
    except Exception as cache_error:  # noqa: BLE001 - any cache miss means "try the network"
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True")
        if offline:
            raise ModelNotFoundError(
                _missing_model_message(model, "not in the local Hugging Face cache (offline mode).")
            ) from cache_error
    try:
        logger.info("downloading %s from the Hugging Face Hub", model)
        return Path(snapshot_download(model, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001
        raise ModelNotFoundError(
            _missing_model_message(model, f"not cached locally and the download failed ({type(e).__name__}).")
        ) from e


#: What to do about a model folder with a damaged or incomplete file.
_REPAIR = (
    "re-download the model (for a Hugging Face hub model: download it again with `force_download=True`, or "
    "delete its folder from the Hugging Face cache), or re-save it from a working copy with `save_pretrained`"
)
_FOLDER_COMPONENTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
_CONFIG_NAMES = ("model_index.json", "config.json", "scheduler_config.json", "tokenizer_config.json")


def _damaged(folder: Path, what: str) -> NotADiffusionModelError:
    return NotADiffusionModelError(
        f"{folder} is a damaged diffusers model folder: {what}. The download or save was probably interrupted, "
        f"or the file was edited: {_REPAIR}."
    )


def read_json_file(folder: Path, rel: str) -> Any:
    """The parsed JSON file ``folder / rel``.

    Raises:
        NotADiffusionModelError: it is unreadable, not JSON, or (for configs) not a JSON object.
    """
    is_config = Path(rel).name in _CONFIG_NAMES
    if "/" in rel:
        label = f"the {rel.split('/')[0]} {'config' if is_config else 'file'} {rel}"
    else:
        label = f"the pipeline index {rel}"
    try:
        data = json.loads((folder / rel).read_bytes())
    except json.JSONDecodeError as e:
        raise _damaged(folder, f"{label} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise _damaged(folder, f"{label} is not JSON text (undecodable bytes at byte {e.start})") from e
    except OSError as e:
        raise _damaged(folder, f"{label} cannot be read ({type(e).__name__}: {e.strerror or e})") from e
    if is_config and not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise _damaged(folder, f"{label} holds {kind} where a JSON object {{...}} belongs")
    return data


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a .safetensors file (truncated, not safetensors), or None if it looks whole."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is truncated: it has {size} bytes, too few for even a safetensors header"
            n = int.from_bytes(head, "little")
            if n > 100_000_000:
                return "is not a safetensors file (its first bytes are not a safetensors header)"
            if 8 + n > size:
                return f"is truncated: it has {size:,} bytes, fewer than its header alone takes ({8 + n:,})"
            header = json.loads(f.read(n))
        data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except OSError as e:
        return f"cannot be read ({type(e).__name__}: {e.strerror or e})"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "is not a safetensors file (its header is unreadable)"
    expected = 8 + n + int(data_end)
    if size < expected:
        return f"is truncated: only {size:,} of its {expected:,} bytes are present"
    return None


def _weights_problem(folder: Path, component: str) -> tuple[str, str] | None:
    """(file relative to `folder`, what is wrong) for the first damaged or missing weights file of `component`.

    Only the files ``from_pretrained`` reads without a `variant` are looked at: ``NAME.safetensors``, its
    shards ``NAME-0000i-of-0000n.safetensors`` (listed in ``NAME.safetensors.index.json``), else ``NAME.bin``.
    """
    import zipfile

    d = folder / component
    plain = lambda pattern: sorted(p for p in d.glob(pattern) if p.name.count(".") == 1)  # noqa: E731
    st, bins = plain("*.safetensors"), plain("*.bin")
    for index in sorted(d.glob("*.safetensors.index.json")):
        if index.name.count(".") != 3:  # a variant's index, e.g. NAME.fp16.safetensors.index.json
            continue
        try:
            shards = set(json.loads(index.read_bytes()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return f"{component}/{index.name}", "is not a readable weights index"
        for shard in sorted(shards):
            if not (d / str(shard)).is_file():
                return f"{component}/{shard}", f"is missing (listed in {component}/{index.name})"
    for file in st:
        problem = _safetensors_problem(file)
        if problem:
            return f"{component}/{file.name}", problem
    if not st:
        for file in bins:
            if not zipfile.is_zipfile(file):
                return f"{component}/{file.name}", "is truncated or not a PyTorch weights file"
    if not st and not bins:
        expected = ("model" if component.startswith("text_encoder") else "diffusion_pytorch_model") + ".safetensors"
        variants = sorted(p.name for p in d.glob("*.safetensors")) + sorted(p.name for p in d.glob("*.bin"))
        if variants:
            return f"{component}/{expected}", f"is missing (there are only variants: {', '.join(variants)})"
        return f"{component}/{expected}", "is missing (the folder holds no weights file)"
    return None


def _component_error(folder: Path, component: str, error: Exception) -> NotADiffusionModelError:
    """The NotADiffusionModelError for a component whose from_pretrained raised `error`."""
    problem = (
        _weights_problem(folder, component) if component in ("unet", "vae", "text_encoder", "text_encoder_2") else None
    )
    if problem is not None:
        rel, what = problem
        return _damaged(folder, f"the {component} weights file {rel} {what}")
    import re

    text = str(error).strip()
    first_line = (text.splitlines() or [""])[0].rstrip(". ")
    if len(first_line) > 300:
        first_line = first_line[:300] + "..."
    try:
        files = ", ".join(sorted(p.name for p in (folder / component).iterdir() if p.is_file())) or "no files"
    except OSError:
        files = "unreadable"
    shape = re.search(r"(\S+) expected shape torch\.Size\((\[[\d, ]*\])\), but got torch\.Size\((\[[\d, ]*\])\)", text)
    if shape or "size mismatch" in text:
        detail = (
            f"{shape[1]}: the config asks for {shape[2]}, the weights file holds {shape[3]}" if shape else first_line
        )
        return NotADiffusionModelError(
            f"{folder}: the {component} weights do not fit {component}/config.json ({detail}). The config and the "
            f"weights come from different models: restore the config that belongs to the weights, or {_REPAIR}."
        )
    return NotADiffusionModelError(
        f"{folder}: cannot load the {component} from {folder / component} (it holds {files}): "
        f"{type(error).__name__}: {first_line}. If a file there is damaged or incomplete, {_REPAIR}."
    )


def load_folder(path: Path, torch_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Load the components of a diffusers text-to-image folder (SD 1.x/2.x, SDXL-family).

    The folder's JSON files (model_index.json and those in the component subfolders) are checked
    before anything is loaded; a component that then fails to load is reported with the file to blame
    (e.g. a truncated ``unet/diffusion_pytorch_model.safetensors``).

    Args:
        path: a folder as written by ``save_pretrained``: model_index.json, unet/, vae/, scheduler/,
            text_encoder/ + tokenizer/ and/or text_encoder_2/ + tokenizer_2/.
        torch_dtype: load the weights in this dtype (default: as stored, i.e. usually float32).

    Returns:
        A dict with unet, vae, text_encoder, tokenizer, scheduler and, for SDXL-shaped models,
        text_encoder_2 and tokenizer_2.

    Raises:
        NotADiffusionModelError: the folder lacks a UNet, VAE, scheduler or text encoder; a JSON file in it
            is not valid JSON; a weights file is truncated, unreadable or missing; or a component fails to
            load for another reason. The message names the folder, the component and the file.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    required = ("unet", "vae", "scheduler")
    missing = [
        c
        for c in required
        if not (path / c / "config.json").is_file() and not (path / c / "scheduler_config.json").is_file()
    ]
    has_text = (path / "text_encoder").is_dir() or (path / "text_encoder_2").is_dir()
    if missing or not has_text:
        raise NotADiffusionModelError(
            f"{path} is not a diffusers text-to-image model folder: missing "
            f"{', '.join(missing + ([] if has_text else ['text_encoder']))} (expected subfolders "
            "unet/, vae/, text_encoder/, tokenizer/, scheduler/ as written by save_pretrained)."
        )
    # Cheap checks first: every JSON file that loading will read.
    index: dict[str, Any] = {}
    if (path / "model_index.json").is_file():
        index = read_json_file(path, "model_index.json")
    for component in _FOLDER_COMPONENTS:
        if (path / component).is_dir():
            for file in sorted((path / component).glob("*.json")):
                read_json_file(path, f"{component}/{file.name}")

    kw: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    loaders: list[tuple[str, Any]] = [
        ("unet", lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)),
        ("vae", lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)),
        ("scheduler", lambda: DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)),
    ]
    if (path / "text_encoder").is_dir():
        loaders += [
            ("text_encoder", lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)),
            ("tokenizer", lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)),
        ]
    if (path / "text_encoder_2").is_dir():
        loaders += [
            (
                "text_encoder_2",
                lambda: CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw),
            ),
            (
                "tokenizer_2",
                lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True),
            ),
        ]
    parts: dict[str, Any] = {}
    for name, load in loaders:
        try:
            parts[name] = load()
        except (ImportError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - diffusers/transformers/safetensors/json raise many kinds
            raise _component_error(path, name, e) from e
    if index.get("_class_name"):
        logger.debug("loaded %s components from %s", index["_class_name"], path)
    return parts


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
