"""Where an MM-DiT's features are, by role (`LayerMap`), what a `FeatureRequest` names on it,
and the image tokens of its blocks.

Every joint attention layer yields an image map and (if it sees text: not SD3.5's ``attn2``) a
text map, all on one token grid (stride = the patch size). The block outputs are the
transformer blocks' image tokens in forward order (FLUX: the dual-stream blocks, then the
single-stream ones); the feature layer is the middle block's output (no published choice for
DiffCut on an MM-DiT: to be tuned on the proving ground).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .features import FeatureRequest
from .joint_attention import JointRequest, joint_layers
from .protocol import AttentionLayer, LayerMap

__all__ = ["mmdit_layer_map", "joint_request", "block_outputs"]


def mmdit_layer_map(transformer: torch.nn.Module, patch_size: int) -> LayerMap:
    """The `LayerMap` of an SD3 / SD3.5 / FLUX transformer (see the module docstring)."""
    heads = int(transformer.config.num_attention_heads)
    layers = joint_layers(transformer)
    attention = []
    for path in layers:
        attention.append(AttentionLayer(path, "image", patch_size, heads))
        if not path.endswith("attn2"):
            attention.append(AttentionLayer(path, "text", patch_size, heads))
    blocks = tuple(p.rsplit(".", 1)[0] for p in layers if p.endswith(".attn"))
    return LayerMap(tuple(attention), feature_layer=blocks[len(blocks) // 2], decoder_outputs=blocks)


def joint_request(layer_map: LayerMap, request: FeatureRequest, family: str) -> JointRequest | None:
    """The layers a `FeatureRequest` names on an MM-DiT: ``self_attention`` selects image maps,
    ``cross_attention`` text maps (True: every such layer; patterns: fnmatch over the layer map's
    paths); None when it names no attention.

    Raises:
        ValueError: naming `request` for what an MM-DiT does not record: maps per head, "none"
            (exp() overflows: ask for "log"), "log" image maps, or a pattern that selects nothing.
    """
    log_images = request.normalization == "log" and request.self_attention
    if request.normalization == "none" or log_images or not request.average_heads:
        raise ValueError(
            f"`request` asks for {request.normalization!r} attention with average_heads={request.average_heads}; "
            "a diffusion transformer's joint attention is recorded head-averaged, image maps as probabilities "
            "('softmax'), text maps as probabilities or unnormalised logs ('log')."
        )
    chosen: dict[str, tuple[str, ...]] = {}
    for kind, wanted in (("image", request.self_attention), ("text", request.cross_attention)):
        paths = [a.path for a in layer_map.layers(kind)]
        if wanted is True:
            chosen[kind] = tuple(paths)
        elif wanted:
            chosen[kind] = tuple(p for p in paths if any(fnmatch.fnmatchcase(p, pat) for pat in wanted))
            if not chosen[kind]:
                raise ValueError(
                    f"`request` patterns {wanted} select no image->{kind} layer of this {family} model "
                    f"({paths[0]!r} ... {paths[-1]!r})."
                )
        else:
            chosen[kind] = ()
    if not (chosen["image"] or chosen["text"]):
        return None
    return JointRequest(chosen["image"], chosen["text"], text_normalization=request.normalization)


@contextlib.contextmanager
def block_outputs(model: torch.nn.Module, blocks: Sequence[str], grid: tuple[int, int]) -> Iterator[dict]:
    """Record the image tokens of each block in `blocks` (forward hooks, removed in ``finally``)
    as (B, C, h, w) float32 on the token `grid`.

    Raises:
        ValueError: naming `hidden_states`, if a path is not a block of `model`.
    """
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    names = dict(model.named_modules())
    try:
        for path in blocks:
            if path not in names:
                raise ValueError(f"`hidden_states` names {path!r}, not a block of this {type(model).__name__}.")

            def hook(module: torch.nn.Module, args: Any, out: Any, path: str = path) -> None:
                image = out[1] if isinstance(out, tuple) else out  # blocks return (text, image)
                outputs[path] = image.float().transpose(1, 2).unflatten(-1, grid)

            hooks.append(names[path].register_forward_hook(hook))
        yield outputs
    finally:
        for h in hooks:
            h.remove()
