"""Where things are in a diffusers UNet: the layer paths of a role ("the deepest encoder
self-attention", "the finest attention level", "the attention levels of the decoder").

The walk over `down_blocks` / `up_blocks` lives here rather than in each method.
`unet_layer_map` answers every role at once as a `protocol.LayerMap` (what
`DiffusionBackbone.layer_map` returns and methods plan with); the finders below are its parts.
Self- and cross-attention are told apart by the diffusers names ``attn1`` / ``attn2``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from torch import nn

from .protocol import AttentionLayer, LayerMap

if TYPE_CHECKING:
    from .features import FeatureRequest

__all__ = [
    "deepest_encoder_self_attention", "attention_grids", "attention_levels", "finest_attention_layers",
    "recorded_bytes", "unet_layer_map",
]  # fmt: skip


def deepest_encoder_self_attention(unet: nn.Module) -> str:
    """Diffusers path of the `attn1` of the last transformer block of the last attention of the
    last down block that has attentions.

    That is DiffCut's feature module (`tools/ldm.py` l.56-66 hard-codes `down_blocks[-1]` for
    SDXL-family models and `down_blocks[-2]` for SD 1.4; both are this rule).

    Raises:
        ValueError: if `unet` has no down blocks, or none of them has attention layers.
    """
    blocks = getattr(unet, "down_blocks", None)
    if blocks is None:
        raise ValueError(f"`unet` has no `down_blocks`; expected a UNet2DConditionModel, got {type(unet).__name__}.")
    for i in range(len(blocks) - 1, -1, -1):
        attentions = getattr(blocks[i], "attentions", None)
        if not attentions:
            continue
        j = len(attentions) - 1
        transformer_blocks = getattr(attentions[j], "transformer_blocks", None)
        if not transformer_blocks:
            continue
        k = len(transformer_blocks) - 1
        return f"down_blocks.{i}.attentions.{j}.transformer_blocks.{k}.attn1"
    raise ValueError("no down block of this UNet has attention layers; DiffCut needs one.")


def attention_grids(unet: nn.Module, latent_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """The (h, w) token grid of every attention layer of `unet` for a latent of `latent_size`.

    Follows the UNet's stride-2 resampling: down block i sees the latent halved (ceil) once per
    downsampler before it, the mid block the deepest grid, up block j doubled back once per
    upsampler before it. No forward pass is run.
    """
    h, w = latent_size
    grids: dict[str, tuple[int, int]] = {}
    sizes = [(h, w)]
    for i, block in enumerate(unet.down_blocks):
        _name_grid(grids, f"down_blocks.{i}", block, sizes[-1])
        if getattr(block, "downsamplers", None):
            sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    if getattr(unet, "mid_block", None) is not None:
        _name_grid(grids, "mid_block", unet.mid_block, sizes[-1])
    level = len(sizes) - 1
    for j, block in enumerate(unet.up_blocks):
        _name_grid(grids, f"up_blocks.{j}", block, sizes[level])
        if getattr(block, "upsamplers", None):
            level = max(level - 1, 0)
    return grids


def recorded_bytes(
    unet: nn.Module, request: FeatureRequest, latent_size: tuple[int, int], text_tokens: int, rows: int = 1
) -> int:
    """Bytes of float32 attention maps that recording `request` for `rows` images with a latent
    of `latent_size` (h, w) and prompts of `text_tokens` tokens allocates: the kept maps (per
    layer or per resolution) plus the largest map being recorded. No forward pass is run."""
    kept: dict[str, int] = {}
    largest = 0
    for layer, (h, w) in attention_grids(unet, latent_size).items():
        if not request.wants_attention(layer):
            continue
        n = h * w
        size = rows * n * (n if layer.endswith("attn1") else text_tokens) * 4
        if not request.average_heads:
            size *= unet.get_submodule(layer).heads
        key = layer if request.per_layer else f"{layer[-5:]}@{h}x{w}"
        kept[key] = size
        largest = max(largest, size)
    return sum(kept.values()) + largest


def attention_levels(unet: nn.Module, kind: str = "attn1") -> list[tuple[str, ...]]:
    """Diffusers paths of the `kind` ("attn1" self / "attn2" cross) attention layers grouped by
    token grid, from the coarsest level to the finest (SD 1.x at 512 px: 8, 16, 32, 64; the
    mid block shares the coarsest). The grouping depends only on the UNet's structure.

    Raises:
        ValueError: on an unknown `kind` or a UNet without such layers.
    """
    if kind not in ("attn1", "attn2"):
        raise ValueError(f"`kind` must be 'attn1' or 'attn2', got {kind!r}.")
    side = 2 ** (len(getattr(unet, "down_blocks", ())) + 1)  # any latent keeps the levels apart
    grids = {k: v for k, v in attention_grids(unet, (side, side)).items() if k.endswith(kind)}
    if not grids:
        raise ValueError(f"this UNet has no {kind} attention layers.")
    areas = sorted({h * w for h, w in grids.values()})
    return [tuple(k for k, (h, w) in grids.items() if h * w == a) for a in areas]


def finest_attention_layers(unet: nn.Module, kind: str = "attn1") -> tuple[str, ...]:
    """The `kind` attention layers on the finest token grid: the first encoder level with
    attention and its decoder twin (SD 1.x/2.x: ``down_blocks.0`` and ``up_blocks.3``, 64x64 at
    512 px; SDXL: ``down_blocks.1`` and ``up_blocks.1``). See `attention_levels`."""
    return attention_levels(unet, kind)[-1]


def unet_layer_map(unet: nn.Module) -> LayerMap:
    """Where things are in `unet`, by role, as a `LayerMap`.

    * `attention`: every `attn1` ("image": (N, N) maps) and `attn2` ("text": (N, T) maps)
      layer in forward order, with its stride (latent cells per token side: 2 ** the
      downsamplers before it, so a latent (h, w) gives it the grid `attention_grids` gives)
      and its heads;
    * `feature_layer`: DiffCut's module (`deepest_encoder_self_attention`), None without one;
    * `decoder_outputs`: ``up_blocks.0`` .. ``up_blocks.{n-1}`` (MaskDiffusion's features).

    No forward pass is run. ``levels(kind)`` / ``finest(kind)`` of the map equal
    `attention_levels` / `finest_attention_layers` with "attn1" / "attn2".
    """
    side = 2 ** (len(getattr(unet, "down_blocks", ())) + 1)  # any latent keeps the levels apart
    kinds = {"attn1": "image", "attn2": "text"}
    attention = tuple(
        AttentionLayer(path, kinds[path.rsplit(".", 1)[-1]], side // h, unet.get_submodule(path).heads)
        for path, (h, _) in attention_grids(unet, (side, side)).items()
    )
    try:
        feature = deepest_encoder_self_attention(unet)
    except ValueError:
        feature = None
    return LayerMap(attention, feature, tuple(f"up_blocks.{j}" for j in range(len(unet.up_blocks))))


#: Block -> the names of its attention layers (walking a block's modules costs more than the
#: methods' own post-processing on small models, and memory checks run per query).
_ATTENTION_NAMES: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _name_grid(grids: dict[str, tuple[int, int]], prefix: str, block: nn.Module, grid: tuple[int, int]) -> None:
    names = _ATTENTION_NAMES.get(block)
    if names is None:
        names = tuple(
            name
            for name, module in block.named_modules()
            if name.endswith(("attn1", "attn2")) and hasattr(module, "heads")
        )
        _ATTENTION_NAMES[block] = names
    for name in names:
        grids[f"{prefix}.{name}"] = grid
