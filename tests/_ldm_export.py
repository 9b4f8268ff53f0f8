"""Test helper: diffusers SD-1.x / SDXL components -> one original-format (LDM / CompVis / A1111) state dict.

This is the inverse of diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_ldm_clip_checkpoint` (``diffusers/loaders/single_file_utils.py``), written from the key
layout those converters read, so that a round trip through a single `.safetensors` / `.ckpt` file
can be checked weight for weight without any real checkpoint or network:

* UNet -> ``model.diffusion_model.*``: ``input_blocks.0.0`` = conv_in; then per down level
  ``layers_per_block`` entries ``input_blocks.i.{0: ResBlock, 1: SpatialTransformer}`` followed by
  one ``input_blocks.i.0.op`` (downsampler) except on the last level; ``middle_block.{0,1,2}``;
  ``output_blocks.i.{0: ResBlock, 1: SpatialTransformer, 1|2: Upsample.conv}`` with
  ``layers_per_block + 1`` entries per up level; ``time_embed.{0,2}``, ``out.{0,2}``.
* VAE -> ``first_stage_model.*``: ``encoder.down.i.block.j``, ``encoder.down.i.downsample.conv``,
  ``{encoder,decoder}.mid.block_{1,2}`` / ``mid.attn_1.{norm,q,k,v,proj_out}`` (1x1 convs),
  ``decoder.up.(n-1-i).block.j`` / ``.upsample.conv`` (the decoder is stored in reverse order),
  ``nin_shortcut`` for resnet shortcuts, ``norm_out`` for ``conv_norm_out``.
* CLIP text encoder -> ``cond_stage_model.transformer.text_model.*`` (HF CLIPTextModel layout).
* SDXL (`sdxl_to_ldm`): ``label_emb.0.{0,2}`` for the ``text_time`` embedding, the first text
  encoder under ``conditioner.embedders.0.transformer.*``, the second in the OpenCLIP layout under
  ``conditioner.embedders.1.model.*``.

Only the layouts diffuseg's tiny models use are covered (no class embeddings, non-EMA weights).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["unet_to_ldm", "vae_to_ldm", "clip_to_ldm", "open_clip_to_ldm", "sd1_to_ldm", "sdxl_to_ldm"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL `text_time` conditioning
    "add_embedding.linear_2": "label_emb.0.2",
}
#: diffusers ResnetBlock2D -> LDM ResBlock (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: diffusers VAE Attention -> LDM AttnBlock.
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str, prefix: str) -> str | None:
    return key[len(prefix) :] if key.startswith(prefix) else None


def _rename_resnet(rest: str) -> str:
    """`norm1.weight` -> `in_layers.0.weight` (rest is the part after `resnets.j.`)."""
    layer, _, param = rest.partition(".")
    return f"{_UNET_RESNET[layer]}.{param}"


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` (SD-1.x/2.x layout) as LDM `model.diffusion_model.*` keys.

    Raises:
        ValueError: for a key this exporter does not know (a layout it was not written for).
    """
    cfg = unet.config
    if (
        cfg.get("class_embed_type")
        or cfg.get("num_class_embeds")
        or cfg.get("addition_embed_type") not in (None, "text_time")
    ):
        raise ValueError("class embeddings / non-SDXL addition embeddings are not supported by this exporter")
    per_level = cfg["layers_per_block"]
    n_levels = len(cfg["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        value = value.detach().clone()
        parts = key.split(".")
        name = None
        stem, _, param = key.rpartition(".")
        if stem in _UNET_TOP:
            name = f"{_UNET_TOP[stem]}.{param}"
        elif parts[0] == "down_blocks":
            b = int(parts[1])
            kind = parts[2]
            if kind in ("resnets", "attentions"):
                j = int(parts[3])
                i = 1 + b * (per_level + 1) + j
                rest = ".".join(parts[4:])
                name = (
                    f"input_blocks.{i}.0.{_rename_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
                )
            elif kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.{weight,bias}
                i = 1 + b * (per_level + 1) + per_level
                name = f"input_blocks.{i}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            j = int(parts[2])
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                name = f"middle_block.{2 * j}.{_rename_resnet(rest)}"
            elif parts[1] == "attentions":
                name = f"middle_block.{2 * j + 1}.{rest}"
        elif parts[0] == "up_blocks":
            b = int(parts[1])
            kind = parts[2]
            has_attn = hasattr(unet.up_blocks[b], "attentions")
            if kind in ("resnets", "attentions"):
                j = int(parts[3])
                i = b * (per_level + 1) + j
                rest = ".".join(parts[4:])
                name = (
                    f"output_blocks.{i}.0.{_rename_resnet(rest)}"
                    if kind == "resnets"
                    else f"output_blocks.{i}.1.{rest}"
                )
            elif kind == "upsamplers" and b < n_levels - 1:
                i = b * (per_level + 1) + per_level  # the level's last entry carries the upsampler
                name = f"output_blocks.{i}.{2 if has_attn else 1}.conv.{parts[-1]}"
        if name is None:
            raise ValueError(f"unet_to_ldm: no LDM name for {key!r}")
        out[UNET_PREFIX + name] = value
    return out


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` as LDM `first_stage_model.*` keys (attention as 1x1 convs).

    Raises:
        ValueError: for a key this exporter does not know.
    """
    n_up = len(vae.config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        value = value.detach().clone()
        parts = key.split(".")
        name = None
        if parts[0] in ("quant_conv", "post_quant_conv"):
            name = key
        elif parts[0] in ("encoder", "decoder"):
            side, part = parts[0], parts[1]
            if part in ("conv_in", "conv_out"):
                name = key
            elif part == "conv_norm_out":
                name = f"{side}.norm_out.{parts[-1]}"
            elif part in ("down_blocks", "up_blocks"):
                b = int(parts[2])
                level = b if part == "down_blocks" else n_up - 1 - b
                ldm_part = "down" if part == "down_blocks" else "up"
                if parts[3] == "resnets":
                    rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                    name = f"{side}.{ldm_part}.{level}.block.{parts[4]}.{rest}"
                elif parts[3] in ("downsamplers", "upsamplers"):
                    sampler = "downsample" if parts[3] == "downsamplers" else "upsample"
                    name = f"{side}.{ldm_part}.{level}.{sampler}.conv.{parts[-1]}"
            elif part == "mid_block":
                if parts[2] == "resnets":
                    rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                    name = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
                elif parts[2] == "attentions":
                    layer = ".".join(parts[4:-1])
                    if layer in _VAE_ATTN:
                        name = f"{side}.mid.attn_1.{_VAE_ATTN[layer]}.{parts[-1]}"
                        if parts[-1] == "weight" and layer != "group_norm":
                            value = value[:, :, None, None]  # Linear -> 1x1 Conv2d, as in LDM
        if name is None:
            raise ValueError(f"vae_to_ldm: no LDM name for {key!r}")
        out[VAE_PREFIX + name] = value.contiguous()
    return out


def clip_to_ldm(text_encoder: Any) -> dict[str, torch.Tensor]:
    """A transformers `CLIPTextModel` as `cond_stage_model.transformer.text_model.*` keys.

    transformers >= 5.6 keeps the text model's weights at the top level (no ``text_model.``);
    the original checkpoints always have it, so it is added where missing.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[CLIP_PREFIX + name] = value.detach().clone()
    return out


def open_clip_to_ldm(text_encoder: Any, prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """A transformers `CLIPTextModelWithProjection` in the OpenCLIP layout (SDXL's second encoder).

    Inverse of diffusers' `convert_open_clip_checkpoint`: q/k/v projections are stacked into
    ``attn.in_proj_{weight,bias}``, ``text_projection`` is stored transposed, layer names follow
    OpenCLIP (``resblocks.N.{ln_1, ln_2, attn, mlp.c_fc, mlp.c_proj}``, ``ln_final``,
    ``positional_embedding``, ``token_embedding``).
    """
    sd = {k.removeprefix("text_model."): v.detach().clone() for k, v in text_encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    sd.pop("embeddings.position_ids", None)
    renames = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    n_layers = text_encoder.config.num_hidden_layers
    for i in range(n_layers):
        src = f"encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")]
            )
        for old, new in renames.items():
            for param in ("weight", "bias"):
                out[f"{dst}{new}.{param}"] = sd.pop(f"{src}{old}.{param}")
    if sd:
        raise ValueError(f"open_clip_to_ldm: no LDM name for {sorted(sd)}")
    return {prefix + k: v for k, v in out.items()}


def sdxl_to_ldm(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> dict[str, torch.Tensor]:
    """SDXL components as one original-format checkpoint: `conditioner.embedders.0.transformer.*`
    (CLIP, HF layout) and `conditioner.embedders.1.model.*` (OpenCLIP layout)."""
    clip = {
        k.replace(CLIP_PREFIX, "conditioner.embedders.0.transformer.", 1): v
        for k, v in clip_to_ldm(text_encoder).items()
    }
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip, **open_clip_to_ldm(text_encoder_2)}


def sd1_to_ldm(unet: Any, vae: Any, text_encoder: Any) -> dict[str, torch.Tensor]:
    """The three SD-1.x components as one original-format checkpoint state dict."""
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(text_encoder)}
