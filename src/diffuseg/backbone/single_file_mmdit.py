"""Single-file checkpoints of diffusion transformers (SD3, SD3.5, FLUX.1) with a pipeline folder.

SD3 / SD3.5 and FLUX.1 transformers are shared as one file in their original layout:
``sd3.5_large.safetensors`` holds ``model.diffusion_model.joint_blocks.N.{x_block,context_block}.*``
(plus, in the "incl_clips" all-in-one files, the VAE and text encoders), ``flux1-dev.safetensors``
holds ``double_blocks.N.*`` and ``single_blocks.N.*`` (BFL layout, with or without the
``model.diffusion_model.`` prefix). Such a file stores no architecture, so `load_mmdit_file`
needs the diffusers pipeline folder of the same model as `config`: the transformer's weights
come from the file, converted by diffusers' own ``from_single_file`` with the architecture of the
folder's ``transformer/config.json``; the VAE, text encoders, tokenizers and scheduler come from
the folder (an all-in-one file's own copies are not read). Nothing is downloaded when `config` is
a local folder; a hub id is taken from the local Hugging Face cache, or downloaded without its
transformer weights unless offline (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from .loading import HUB_PATTERNS, ModelNotFoundError, NotADiffusionModelError, read_json_file, resolve_model
from .mmdit import MMDIT_FAMILIES, MMDiTBackbone, check_pipeline_folder, pipeline_class
from .single_file import meta_parameters, read_checkpoint, transformer_pipeline

__all__ = ["is_mmdit_file", "load_mmdit_file"]

logger = logging.getLogger(__name__)

#: Per pipeline class: what users call the family, the diffusers transformer class, a hub id whose
#: folder is a matching `config`.
_FAMILIES = {
    "StableDiffusion3Pipeline": ("SD3 / SD3.5", "SD3Transformer2DModel", "stabilityai/stable-diffusion-3.5-large"),
    "FluxPipeline": ("FLUX.1", "FluxTransformer2DModel", "black-forest-labs/FLUX.1-dev"),
}
#: The family named where the file says none.
_DEFAULT = "StableDiffusion3Pipeline"
#: The width diffusers' FLUX converter assumes (FLUX.1: 24 heads x 128).
_DIFFUSERS_FLUX_WIDTH = 3072
#: A `config` hub id: everything but the transformer's weights (the file has them).
_CONFIG_PATTERNS = [p for p in HUB_PATTERNS if p != "transformer/*.safetensors"]


def _how_to_config(pipeline: str) -> str:
    family, _, example = _FAMILIES[pipeline]
    return (
        f"Pass `config` a diffusers {pipeline} folder of the same model ({family}; e.g. a local copy of "
        f"{example}, or that hub id when it is in your Hugging Face cache): its model_index.json, "
        "transformer/config.json, vae/, text_encoder*/, tokenizer*/ and scheduler/ are used, its transformer "
        "weights are not."
    )


def is_mmdit_file(path: Path, config: str | None) -> bool:
    """Whether the single file `path` goes the diffusion-transformer way: it is a ``.safetensors``
    / ``.ckpt`` file whose keys hold an SD3 / FLUX transformer (`single_file.transformer_pipeline`),
    or `config` is a local folder of one of `MMDIT_FAMILIES`' pipelines.

    Raises:
        NotADiffusionModelError: `path` is unreadable (`single_file.read_checkpoint`).
    """
    if path.suffix.lower() not in (".safetensors", ".ckpt"):
        return False
    if config is not None and pipeline_class(Path(config).expanduser()) in MMDIT_FAMILIES:
        return True
    return read_checkpoint(path, transformer_pipeline) is not None


def load_mmdit_file(
    path: Path,
    config: str | None,
    *,
    torch_dtype: torch.dtype | None = None,
    drop_t5: bool = False,
    local_files_only: bool | None = None,
) -> MMDiTBackbone:
    """Load an original-layout SD3 / SD3.5 / FLUX.1 transformer file with the rest of its pipeline
    from the diffusers pipeline folder `config` (see the module docstring for the files accepted).

    Args:
        path: the ``.safetensors`` (or ``.ckpt``) file.
        config: a diffusers ``StableDiffusion3Pipeline`` / ``FluxPipeline`` folder of the same model,
            or its hub id (local cache first).
        torch_dtype: weight dtype of every component (default float32).
        drop_t5: SD3 / SD3.5: leave the T5 text encoder out (`MMDiTBackbone.from_pretrained`).
        local_files_only: never download (also implied by ``HF_HUB_OFFLINE=1``).

    Returns:
        The `MMDiTBackbone`, its transformer's weights from `path`, named after `path`.

    Raises:
        ValueError: no `config`; `drop_t5` for a FLUX pipeline.
        NotADiffusionModelError: `path` is unreadable or truncated, holds no SD3 / FLUX
            transformer, is of another family than `config`, or its weights do not fit
            ``transformer/config.json`` (the message names what differs).
        ModelNotFoundError: `config` is neither a folder nor in the cache, and cannot be downloaded.
    """
    keys = read_checkpoint(path, set)
    found = transformer_pipeline(keys)
    holds = f"{path} holds the transformer of a {found} ({_FAMILIES[found][0]})" if found else None
    if config is None:
        raise ValueError(
            f"`config` is needed: {holds or f'{path} is a single file'}, with no architecture and no VAE or text "
            f"encoders; those come from a diffusers pipeline folder. {_how_to_config(found or _DEFAULT)}"
        )
    folder = _config_folder(config, found or _DEFAULT, local_files_only)
    pipeline = pipeline_class(folder)
    if pipeline not in MMDIT_FAMILIES:
        what = f"holds a {pipeline}" if pipeline else "is no diffusers pipeline folder (no readable model_index.json)"
        raise NotADiffusionModelError(
            f"`config` {config} {what}, but {holds or f'{path} is a single file'}. {_how_to_config(found or _DEFAULT)}"
        )
    if found is None:
        sample = ", ".join(sorted(keys)[:5]) or "no tensors at all"
        raise NotADiffusionModelError(
            f"{path} holds no {_FAMILIES[pipeline][0]} transformer in the original layout ({len(keys)} tensors, "
            f"e.g. {sample}), though `config` {config} is a {pipeline} folder: pass the transformer's single file "
            "(SD3: model.diffusion_model.joint_blocks.*; FLUX.1: double_blocks.* and single_blocks.*), or the "
            "pipeline folder itself as `model`."
        )
    if found != pipeline:
        raise NotADiffusionModelError(
            f"{holds}, but `config` {config} is a {pipeline} ({_FAMILIES[pipeline][0]}) folder. {_how_to_config(found)}"
        )
    check_pipeline_folder(folder, drop_t5)  # before the (large) transformer is read
    transformer_config = read_json_file(folder, "transformer/config.json")
    _check_structure(path, folder, pipeline, keys, transformer_config)
    transformer = _load_transformer(path, folder, pipeline, transformer_config, torch_dtype)
    logger.info("loaded the %s transformer from %s, the rest of the pipeline from %s", pipeline, path, folder)
    return MMDiTBackbone.from_pretrained(folder, torch_dtype=torch_dtype, drop_t5=drop_t5, transformer=transformer)


def _config_folder(config: str, pipeline: str, local_files_only: bool | None) -> Path:
    """`config` as a local folder: itself, or a hub id's snapshot without transformer weights."""
    try:
        folder = resolve_model(config, local_files_only, patterns=_CONFIG_PATTERNS)
    except ModelNotFoundError as e:  # its message names `model`: keep only the reason
        reason = str(e).splitlines()[0].partition("is not available: ")[2].rstrip(".") or "not found"
        raise ModelNotFoundError(f"`config` {config!r} is not available: {reason}. {_how_to_config(pipeline)}") from e
    if not folder.is_dir():
        raise NotADiffusionModelError(f"`config` {config} is a file, not a pipeline folder. {_how_to_config(pipeline)}")
    return folder


def _blocks(keys: set[str], name: str) -> list[int]:
    """The sorted block indices N of keys ``name.N.*`` (prefix ``model.diffusion_model.`` or none)."""
    pattern = re.compile(rf"^(?:model\.diffusion_model\.)?{re.escape(name)}\.(\d+)\.")
    return sorted({int(m[1]) for k in keys if (m := pattern.match(k))})


def _check_structure(path: Path, folder: Path, pipeline: str, keys: set[str], config: dict[str, Any]) -> None:
    """The file's blocks against the config's: diffusers would load a file with more blocks (or
    another dual-attention / guidance layout) than the config without complaint, ignoring the rest."""

    def having(part: str) -> set[str]:
        return {k for k in keys if part in k}

    if pipeline == "StableDiffusion3Pipeline":
        pairs = {
            "num_layers": (len(_blocks(keys, "joint_blocks")), config.get("num_layers")),
            "dual_attention_layers": (
                _blocks(having(".x_block.attn2."), "joint_blocks"),
                sorted(config.get("dual_attention_layers") or ()),
            ),
            "qk_norm": (bool(having(".attn.ln_q.")), config.get("qk_norm") is not None),
        }
    else:
        pairs = {
            "num_layers": (len(_blocks(keys, "double_blocks")), config.get("num_layers")),
            "num_single_layers": (len(_blocks(keys, "single_blocks")), config.get("num_single_layers")),
            "guidance_embeds": (bool(having("guidance_in.")), bool(config.get("guidance_embeds"))),
        }
    differ = [f"`{f}` is {cfg!r} there, {ours!r} in the file" for f, (ours, cfg) in pairs.items() if ours != cfg]
    if differ:
        raise NotADiffusionModelError(
            f"{path} does not fit {folder / 'transformer' / 'config.json'}: {'; '.join(differ)}. The file and "
            f"the folder are of different models (e.g. SD3.5 Large and Medium, FLUX.1-dev and -schnell). "
            f"{_how_to_config(pipeline)}"
        )


def _load_transformer(
    path: Path, folder: Path, pipeline: str, config: dict[str, Any], torch_dtype: torch.dtype | None
) -> Any:
    """The transformer, converted and loaded by diffusers' ``from_single_file``; its failures explained."""
    import diffusers

    family, class_name, _ = _FAMILIES[pipeline]
    kw: dict[str, Any] = {"config": str(folder), "subfolder": "transformer", "local_files_only": True}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    try:
        transformer = getattr(diffusers, class_name).from_single_file(str(path), **kw)
    except Exception as e:  # noqa: BLE001 - diffusers' converters raise KeyError, ValueError, RuntimeError
        raise NotADiffusionModelError(_load_failure(path, folder, pipeline, config, e)) from e
    empty = meta_parameters(transformer)
    if empty:
        raise NotADiffusionModelError(
            f"{path} lacks {len(empty)} of the {sum(1 for _ in transformer.parameters())} {family} transformer "
            f"weights that {folder / 'transformer' / 'config.json'} requires (e.g. {', '.join(empty[:3])}): the "
            f"file is partial or of another architecture. {_how_to_config(pipeline)}"
        )
    return transformer


def _load_failure(path: Path, folder: Path, pipeline: str, config: dict[str, Any], error: Exception) -> str:
    """What a failed ``from_single_file`` means, for the user."""
    import diffusers

    family, class_name, _ = _FAMILIES[pipeline]
    text = str(error).strip()
    shape = re.search(r"(\S+) expected shape torch\.Size\((\[[\d, ]*\])\), but got torch\.Size\((\[[\d, ]*\])\)", text)
    if isinstance(error, KeyError):
        why = (
            f"it lacks the tensor {error.args[0]!r} (the first one missing) that diffusers' {family} converter "
            f"reads: the file is partial or of another architecture. {_how_to_config(pipeline)}"
        )
    elif shape or "size mismatch" in text:
        detail = f"{shape[1]}: the config asks for {shape[2]}, the file holds {shape[3]}" if shape else text[:300]
        why = f"its weights do not fit {folder / 'transformer' / 'config.json'} ({detail}). {_how_to_config(pipeline)}"
    elif pipeline == "FluxPipeline" and "split" in text:
        width = int(config.get("num_attention_heads", 0)) * int(config.get("attention_head_dim", 0))
        why = (
            f"diffusers' FLUX converter (diffusers {diffusers.__version__}) splits single blocks for FLUX.1's width "
            f"{_DIFFUSERS_FLUX_WIDTH} (24 heads x 128), and this transformer is {width} wide (`num_attention_heads` "
            "x `attention_head_dim`); only FLUX.1-width files load from a single file, convert others to a "
            "diffusers folder."
        )
        return f"cannot load {path}: {why}"
    else:
        why = f"diffusers could not build a {class_name} from it with {folder}'s config. {_how_to_config(pipeline)}"
    first = (text.splitlines() or [""])[0][:300]
    return f"cannot load {path}: {why}\n(diffusers: {type(error).__name__}: {first})"
