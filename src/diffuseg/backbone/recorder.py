"""Record attention maps and module outputs from a diffusers UNet during one forward pass.

Attention is captured through diffusers' attention-processor API: a `RecordingAttnProcessor`
is installed only on the requested layers (every other layer keeps its fast processor), and
module outputs through forward hooks. `record()` is a context manager that restores the
original processors and removes the hooks in `finally`, also when the forward pass raises.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .features import FeatureRequest

__all__ = ["RecordingAttnProcessor", "AttentionStore", "record", "EarlyExit", "attention_layers"]

logger = logging.getLogger(__name__)

_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_TILE_ELEMENTS = 1 << 20  # query rows per tile x keys: ~4 MB of float32 scores


class EarlyExit(Exception):
    """Raised inside the UNet once everything requested is recorded (caught by the caller)."""


def attention_layers(unet: nn.Module) -> list[str]:
    """Diffusers paths of all attention layers (``....attn1`` / ``....attn2``), in call order."""
    return [k[: -len(".processor")] for k in unet.attn_processors]


def grid_size(num_tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of a layer with `num_tokens` tokens in a UNet whose input latent is
    `latent_size`, following the UNet's stride-2 downsampling (ceil division)."""
    h, w = latent_size
    while h * w > num_tokens and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != num_tokens:
        raise RuntimeError(f"cannot place {num_tokens} tokens on a grid derived from latent size {latent_size}.")
    return h, w


@dataclass
class AttentionStore:
    """Buffers filled by the recording processors and hooks of one `record()` scope.

    `maps[kind][key]` holds a float32 tensor; in per-resolution mode it is a running mean over
    `counts[kind][key]` layers (with `log_space`, of the exp of log maps, kept as a log:
    ``log((n e^old + e^new) / (n + 1))``). `hidden[path]` holds module outputs (float32).
    """

    latent_size: tuple[int, int]
    per_layer: bool
    batch_slice: slice | None = None
    log_space: bool = False
    maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=lambda: {"self": {}, "cross": {}})
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {"self": {}, "cross": {}})
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: int = 0
    expected: int = 0
    early_exit: bool = False

    def _select(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.batch_slice is None else t[self.batch_slice]

    def add_attention(self, layer: str, kind: str, value: torch.Tensor, num_queries: int) -> None:
        """Accumulate `value` (B, [heads,] N, M) float32 for the layer at path `layer`."""
        value = self._select(value)
        size = grid_size(num_queries, self.latent_size)
        key = layer if self.per_layer else f"{layer.rsplit('.', 1)[-1]}@{size[0]}x{size[1]}"
        store, counts = self.maps[kind], self.counts[kind]
        if key not in store:
            store[key] = value.clone()
            counts[key] = 1
        else:
            n = counts[key]
            if self.log_space:  # the mean of exp(maps), as a log: no overflow
                old = store[key].add_(math.log(n / (n + 1)))
                torch.logaddexp(old, value + math.log(1.0 / (n + 1)), out=old)
            else:
                store[key].mul_(n / (n + 1)).add_(value, alpha=1.0 / (n + 1))  # running mean, in place
            counts[key] = n + 1
        self.sizes[key] = size
        self._tick()

    def add_hidden(self, path: str, value: torch.Tensor) -> None:
        """Store a module output (converted to float32)."""
        self.hidden[path] = self._select(value.detach()).float()
        self._tick()

    def _tick(self) -> None:
        self.calls += 1
        if self.early_exit and self.calls >= self.expected:
            raise EarlyExit


class RecordingAttnProcessor:
    """An attention processor that also records the attention map of its layer.

    The layer's output is its own processor's (`inner`, e.g. diffusers' fused
    ``AttnProcessor2_0``), bit for bit: recording a layer never changes what the model computes,
    so a method's features do not depend on which other layers a shared pass records. The map
    is computed beside it, as ``diffusers.models.attention_processor.AttnProcessor``
    (diffusers 0.27-0.42) computes q and k, with the scores in float32 in tiles of query rows
    (all heads per tile), so the probabilities are recorded without keeping every head's
    (N, M) map alive.

    Args:
        layer: diffusers path of the layer (``...attn1`` or ``...attn2``).
        store: where maps go.
        normalization: "softmax" records probabilities; "none" records exp(QK^T * scale)
            (MaskDiffusion's unnormalised attention); "log" records its logarithm, the head mean
            taken as logsumexp - log(heads) (no overflow).
        average_heads: record (B, N, M) head means instead of (B, heads, N, M).
        inner: the layer's own processor, which computes its output.
    """

    def __init__(
        self,
        layer: str,
        store: AttentionStore,
        normalization: str = "softmax",
        average_heads: bool = True,
        *,
        inner: Any,
    ) -> None:
        self.layer = layer
        self.kind = "self" if layer.endswith("attn1") else "cross"
        self.store = store
        self.normalization = normalization
        self.average_heads = average_heads
        self.inner = inner

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        self._record(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def _record(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> None:
        """Compute this layer's attention map (see the class docstring) and store it."""
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, N, C)
        batch_size, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        heads = attn.heads
        n_q, n_k = query.shape[1], key.shape[1]
        # (B, N, heads*d) -> (B, heads, N, d)
        q = query.view(batch_size, n_q, heads, -1).transpose(1, 2)
        k = key.view(batch_size, n_k, heads, -1).transpose(1, 2)
        if attention_mask is not None:
            attention_mask = attention_mask.view(batch_size, heads, -1, n_k)
        log = self.normalization == "log"
        record = torch.full(
            (batch_size, 1 if self.average_heads else heads, n_q, n_k),
            -math.inf if log else 0.0,
            dtype=torch.float32,
            device=q.device,
        )
        q32 = q.float() * attn.scale  # scaling q (N x d) is cheaper than scaling scores (N x M)
        k_t = k.float().transpose(-1, -2).contiguous()  # (B, heads, d, M)
        # Blocks of query rows x all heads keep each (rows, M) score tile in cache: about 2.3x
        # faster on CPU than whole (N, M) maps per head, and the peak stays O(rows x M).
        rows = max(1, _TILE_ELEMENTS // max(1, n_k))
        for r0 in range(0, n_q, rows):
            r1 = min(n_q, r0 + rows)
            acc = record[:, 0, r0:r1]
            for i in range(heads):
                scores = torch.matmul(q32[:, i, r0:r1], k_t[:, i])  # (B, rows, M)
                if attention_mask is not None:
                    scores = scores + attention_mask[:, i, r0:r1].float()
                rec = scores.softmax(dim=-1) if self.normalization == "softmax" else scores if log else scores.exp()
                if not self.average_heads:
                    record[:, i, r0:r1] = rec
                elif log:
                    torch.logaddexp(acc, rec, out=acc)  # log of the sum of exp over heads
                else:
                    acc.add_(rec)
        if self.average_heads:
            record.sub_(math.log(heads)) if log else record.mul_(1.0 / heads)
        self.store.add_attention(self.layer, self.kind, record[:, 0] if self.average_heads else record, n_q)


def _resolve_module(unet: nn.Module, path: str) -> nn.Module:
    module = unet
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            module = module[int(part)]  # type: ignore[index]
        else:
            module = getattr(module, part)
    return module


@contextmanager
def record(
    unet: nn.Module,
    request: FeatureRequest,
    latent_size: tuple[int, int],
    batch_slice: slice | None = None,
) -> Iterator[AttentionStore]:
    """Install recorders for `request` on `unet` for the duration of the `with` block.

    Args:
        unet: a diffusers `UNet2DConditionModel` (anything with `attn_processors`).
        request: what to record.
        latent_size: (h, w) of the UNet input, to place each layer's tokens on a grid.
        batch_slice: keep only these batch rows (e.g. ``slice(B, 2B)`` for the conditional half
            of a classifier-free-guidance batch).

    Yields:
        The `AttentionStore` that fills during the forward pass. If `request.early_exit`, the
        pass raises `EarlyExit` once everything is recorded; catch it around the UNet call.

    Raises:
        ValueError: if attention is requested but no layer matches, or a hidden-state path
            does not exist.
        RuntimeError: if `unet` is already being recorded.
    """
    if unet in _ACTIVE:
        raise RuntimeError("this UNet is already being recorded; nested `record()` scopes are not supported.")
    store = AttentionStore(
        latent_size=latent_size,
        per_layer=request.per_layer,
        batch_slice=batch_slice,
        log_space=request.normalization == "log",
    )
    original = dict(unet.attn_processors)
    wanted = [n for n in attention_layers(unet) if request.wants_attention(n)]
    for kind, sel in (("attn1", request.self_attention), ("attn2", request.cross_attention)):
        if sel and not any(n.endswith(kind) for n in wanted):
            raise ValueError(
                f"the UNet has no {'self' if kind == 'attn1' else 'cross'}-attention layers "
                f"matching {sel!r}; a UNet without attention layers cannot be used for this method."
            )
    modules = {}
    for path in request.hidden_states:
        try:
            modules[path] = _resolve_module(unet, path)
        except (AttributeError, IndexError, TypeError) as e:
            raise ValueError(f"`hidden_states` path {path!r} does not exist in the UNet: {e}") from e
    store.expected = len(wanted) + len(modules)
    store.early_exit = request.early_exit
    handles = []
    _ACTIVE.add(unet)
    try:
        if wanted:
            procs = {f"{n}.processor": original[f"{n}.processor"] for n in attention_layers(unet)}
            for n in wanted:
                procs[f"{n}.processor"] = RecordingAttnProcessor(
                    n, store, request.normalization, request.average_heads, inner=original[f"{n}.processor"]
                )
            unet.set_attn_processor(procs)
        for path, module in modules.items():

            def hook(_m: nn.Module, _in: object, out: object, path: str = path) -> None:
                store.add_hidden(path, out[0] if isinstance(out, (tuple, list)) else out)  # type: ignore[arg-type]

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()
        if wanted:
            unet.set_attn_processor(dict(original))  # set_attn_processor pops: pass a copy
        _ACTIVE.discard(unet)
