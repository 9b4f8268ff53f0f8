"""Test helper: diffusers SD3 / SD3.5 / FLUX.1 transformers -> their original single-file layout.

The inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` and
`convert_flux_transformer_checkpoint_to_diffusers` (``diffusers/loaders/single_file_utils.py``),
written from the key layout those converters read, so that a tiny transformer can be saved as an
original-format file and loaded back through ``from_single_file`` without any real checkpoint:

* SD3 / SD3.5 -> ``model.diffusion_model.*``: ``joint_blocks.N.{x_block,context_block}`` with the
  image / text projections fused into ``attn.qkv`` (q, k, v stacked on the output axis),
  ``attn.proj``, ``attn.ln_q`` / ``ln_k`` (q/k norms), ``mlp.fc1`` / ``fc2``,
  ``adaLN_modulation.1``; SD3.5's second image attention as ``x_block.attn2.*``; the last block's
  context half keeps only its qkv, norms and modulation (``context_pre_only``); embedders
  ``x_embedder.proj``, ``pos_embed``, ``t_embedder.mlp.{0,2}``, ``y_embedder.mlp.{0,2}``,
  ``context_embedder``; ``final_layer.{linear,adaLN_modulation.1}``.
* FLUX.1 -> BFL keys (no prefix unless asked): ``double_blocks.N.{img,txt}_{attn,mlp,mod}`` (fused
  ``qkv``, ``norm.{query,key}_norm.scale``), ``single_blocks.N`` with q, k, v and the MLP input
  fused into ``linear1`` and the output into ``linear2``, ``modulation.lin``; embedders
  ``img_in``, ``txt_in``, ``time_in`` / ``vector_in`` / ``guidance_in.{in,out}_layer``.
* The original final adaLN (and SD3's last context modulation) orders its output (shift, scale),
  diffusers' (scale, shift): those halves are swapped back.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["sd3_to_original", "flux_to_original", "PREFIX"]

PREFIX = "model.diffusion_model."

_SD3_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
#: Per joint block: diffusers module (after ``transformer_blocks.N.``) -> original (after ``joint_blocks.N.``).
_SD3_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
#: Fused projections: original module <- the diffusers modules stacked along the output axis.
_SD3_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}

_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_FLUX_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
    "proj_out": "linear2",
}
_FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _per_block(n: int, ours: str, theirs: str, table: dict[str, Any]) -> dict[str, Any]:
    """`table` for blocks 0..n-1: ``ours.i.key`` -> ``theirs.i.value`` (tuples of modules too)."""
    out: dict[str, Any] = {}
    for i in range(n):
        for key, value in table.items():
            if isinstance(value, tuple):  # fused: original module <- diffusers modules
                out[f"{theirs}.{i}.{key}"] = tuple(f"{ours}.{i}.{v}" for v in value)
            else:
                out[f"{ours}.{i}.{key}"] = f"{theirs}.{i}.{value}"
    return out


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (b, a) on dim 0: diffusers' (scale, shift) <-> the original (shift, scale)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first])


def _rename(
    state: dict[str, torch.Tensor],
    names: dict[str, str],
    fused: dict[str, tuple[str, ...]],
    swapped: set[str],
    prefix: str,
) -> dict[str, torch.Tensor]:
    """Every tensor of `state` under its original name; `names` maps whole keys or modules.

    Raises:
        ValueError: naming the tensors this exporter has no original name for.
    """
    left = dict(state)
    out: dict[str, torch.Tensor] = {}
    for original, parts in fused.items():
        for param in ("weight", "bias"):
            keys = [f"{p}.{param}" for p in parts]
            if any(k in left for k in keys):
                out[f"{original}.{param}"] = torch.cat([left.pop(k) for k in keys])
    for key in list(left):
        module, _, param = key.rpartition(".")
        if key in names:
            new = names[key]
        elif module in names:
            new = f"{names[module]}.{param}"
        else:
            continue
        value = left.pop(key)
        out[new] = _swap_halves(value) if module in swapped else value
    if left:
        raise ValueError(f"no original name for {len(left)} tensors, e.g. {sorted(left)[:5]}")
    return {prefix + k: v.detach().clone().contiguous() for k, v in out.items()}


def sd3_to_original(transformer: Any, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers `SD3Transformer2DModel` (SD3 or SD3.5) as an original SD3 state dict."""
    n = int(transformer.config.num_layers)
    names = {**_SD3_TOP, **_per_block(n, "transformer_blocks", "joint_blocks", _SD3_BLOCK)}
    fused = _per_block(n, "transformer_blocks", "joint_blocks", _SD3_FUSED)
    swapped = {"norm_out.linear", f"transformer_blocks.{n - 1}.norm1_context.linear"}
    return _rename(transformer.state_dict(), names, fused, swapped, prefix)


def flux_to_original(transformer: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """A diffusers `FluxTransformer2DModel` as a BFL FLUX.1 state dict (``prefix`` "" as BFL ships
    it; `PREFIX` as ComfyUI saves it)."""
    n, m = int(transformer.config.num_layers), int(transformer.config.num_single_layers)
    names = {
        **_FLUX_TOP,
        **_per_block(n, "transformer_blocks", "double_blocks", _FLUX_DOUBLE),
        **_per_block(m, "single_transformer_blocks", "single_blocks", _FLUX_SINGLE),
    }
    fused = {
        **_per_block(n, "transformer_blocks", "double_blocks", _FLUX_DOUBLE_FUSED),
        **_per_block(m, "single_transformer_blocks", "single_blocks", _FLUX_SINGLE_FUSED),
    }
    return _rename(transformer.state_dict(), names, fused, {"norm_out.linear"}, prefix)
