"""Record joint attention from a diffusion transformer (SD3 / SD3.5 / FLUX) during one forward pass.

MM-DiT blocks attend over one joint sequence of image and text tokens. What a method asks for is
explicit (`JointRequest`): image→image attention and/or image→text attention at given layers,
never inferred from a module's name. Recording goes through diffusers' attention-processor API:
the requested layers get a subclass of their own processor (`JointAttnProcessor2_0` for SD3 and
SD3.5, `FluxAttnProcessor` for FLUX) that recomputes softmax(QKᵀ/√d) from the layer's own
queries and keys (after its q/k norms and, for FLUX, its rotary embedding), reduces it over heads
as it goes, and then calls the parent processor, so the layer's output is exactly what diffusers
computes. Every other layer keeps its fused attention. `record_joint` installs the processors and
restores the originals in ``finally``.

Token order is the model's (reference: ``mmdit_and_fast_ncut.md`` §A.0):

* SD3 / SD3.5: image tokens first, then text (77 CLIP tokens, then T5 tokens). SD3.5's ``attn2``
  (dual-attention layers) is an image-only self-attention: it yields image→image only.
* FLUX: text tokens (T5) first, then image. Single-stream blocks get ``[text; image]`` as one
  sequence and no separate text input; the text length reaches the recorder from the model's
  call (a forward pre-hook reads ``encoder_hidden_states``).

Memory is bounded: per recorded layer the store keeps the head-averaged image→image block
(B, N, N) and the image→text block (B, N, T) in float32, never the full joint map (at 1024 px
SD3's full 24-head map is about 1.9 GB, its image→image block 67 MB); scores are computed in
query tiles (`recording_bytes` gives the total before a pass runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "JointRequest",
    "JointAttentionStore",
    "joint_layers",
    "record_joint",
    "joint_probabilities",
    "recording_bytes",
]

#: Query rows per tile x heads x keys: about 16 MB of float32 scores per tile.
_TILE_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class JointRequest:
    """What to record from a diffusion transformer's joint attention, per layer.

    Attributes:
        image_to_image: attention layer paths (`joint_layers`, e.g. ``"transformer_blocks.9.attn"``)
            whose image→image block is recorded, rows re-normalised over the image keys (the
            joint softmax gives text a share): (B, N, N), rows summing to 1.
        image_to_text: layer paths whose image→text block is recorded: (B, N, T) (a layer
            without text, e.g. SD3.5's ``attn2``, yields none).
        text_normalization: how the image→text block is kept: "softmax", as the joint softmax
            gives it; or "log", unnormalised: log of the head mean of exp(QKᵀ/√d), computed as a
            logsumexp, so nothing overflows (MaskDiffusion's unnormalised cross-attention).
    """

    image_to_image: tuple[str, ...] = ()
    image_to_text: tuple[str, ...] = ()
    text_normalization: str = "softmax"

    def __post_init__(self) -> None:
        for name in ("image_to_image", "image_to_text"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"`{name}` must be a sequence of layer paths, got the string {value!r}.")
            object.__setattr__(self, name, tuple(value))
        if not self.layers:
            raise ValueError("a `JointRequest` must name layers in `image_to_image` and/or `image_to_text`.")
        if self.text_normalization not in ("softmax", "log"):
            raise ValueError(f"`text_normalization` must be 'softmax' or 'log', got {self.text_normalization!r}.")

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer recorded, in the order first named."""
        return tuple(dict.fromkeys((*self.image_to_image, *self.image_to_text)))


@dataclasses.dataclass
class JointAttentionStore:
    """What one `record_joint` scope recorded.

    Attributes:
        image_to_image: layer path -> float32 (B, N, N), rows re-normalised over the N image keys.
        image_to_text: layer path -> float32 (B, N, T), the joint softmax's image→text columns in
            the model's text order (SD3: CLIP then T5; FLUX: T5).
        text_length: T, the text tokens of the last call (0 before any).
    """

    image_to_image: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    image_to_text: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    text_length: int = 0


def joint_layers(model: nn.Module) -> list[str]:
    """The attention layer paths of a diffusion transformer, in call order (for FLUX the
    dual-stream ``transformer_blocks.*`` first, then ``single_transformer_blocks.*``)."""
    return [k[: -len(".processor")] for k in model.attn_processors]


def _image_first(processor: Any) -> bool:
    """Whether the processor's joint sequence is [image; text] (SD3) rather than [text; image]."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    return isinstance(processor, JointAttnProcessor2_0)


def joint_probabilities(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    *,
    image_first: bool,
    text_length: int = 0,
    image_rotary_emb: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The queries, keys and values of one attention layer as its processor forms them.

    Args:
        attn: the layer (diffusers ``Attention`` for SD3, ``FluxAttention`` for FLUX).
        hidden_states: (B, S, C) the layer's input: image tokens, or for a FLUX single-stream
            block the joint ``[text; image]`` sequence.
        encoder_hidden_states: (B, T, C') text tokens of a dual-stream layer, or None.
        image_first: the SD3 order [image; text] (False: FLUX's [text; image]).
        text_length: T of a single-stream block (its text is inside `hidden_states`).
        image_rotary_emb: FLUX's rotary embedding (cos, sin), applied to q and k.

    Returns:
        (q, k, v, T): (B, H, L, D) each over the joint sequence of length L, in the model's token
        order, after the layer's q/k norms (and rotary embedding); T = the text tokens in it.
    """
    if image_first:
        return _sd3_qkv(attn, hidden_states, encoder_hidden_states)
    return _flux_qkv(attn, hidden_states, encoder_hidden_states, text_length, image_rotary_emb)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _sd3_qkv(attn: nn.Module, hs: torch.Tensor, ehs: torch.Tensor | None) -> tuple[Any, Any, Any, int]:
    q, k, v = (_heads(f(hs), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if ehs is None:  # SD3.5's attn2: image tokens only
        return q, k, v, 0
    eq, ek, ev = (_heads(f(ehs), attn.heads) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        eq = attn.norm_added_q(eq)
    if attn.norm_added_k is not None:
        ek = attn.norm_added_k(ek)
    return torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2), ehs.shape[1]


def _flux_qkv(
    attn: nn.Module, hs: torch.Tensor, ehs: torch.Tensor | None, text_length: int, rope: Any
) -> tuple[Any, Any, Any, int]:
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    q, k, v, eq, ek, ev = _get_qkv_projections(attn, hs, ehs)
    q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in (q, k, v))  # (B, L, H, D)
    q, k = attn.norm_q(q), attn.norm_k(k)
    if attn.added_kv_proj_dim is not None and ehs is not None:  # dual-stream: [text; image]
        eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
        q = torch.cat([attn.norm_added_q(eq), q], 1)
        k = torch.cat([attn.norm_added_k(ek), k], 1)
        v = torch.cat([ev, v], 1)
        text_length = ehs.shape[1]
    if rope is not None:
        q = apply_rotary_emb(q, rope, sequence_dim=1)
        k = apply_rotary_emb(k, rope, sequence_dim=1)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), text_length


def _record(
    store: JointAttentionStore,
    request: JointRequest,
    layer: str,
    q: torch.Tensor,
    k: torch.Tensor,
    text_length: int,
    image_first: bool,
) -> None:
    """Head-averaged softmax(QKᵀ/√d) of the image query rows, tile by tile, split into the
    image→image block (re-normalised) and the image→text block, stored float32."""
    b, h, length, d = q.shape
    n = length - text_length
    image = slice(0, n) if image_first else slice(text_length, length)
    text = slice(n, length) if image_first else slice(0, text_length)
    qi = q[:, :, image]
    keys = k.float().transpose(-1, -2)  # (B, H, D, L), once for every tile
    rows = max(1, _TILE_ELEMENTS // max(1, h * length))
    want_i2i, want_i2t = layer in request.image_to_image, layer in request.image_to_text and text_length > 0
    i2i = q.new_empty((b, n, n), dtype=torch.float32) if want_i2i else None
    i2t = q.new_empty((b, n, text_length), dtype=torch.float32) if want_i2t else None
    scale = d**-0.5
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        scores = (qi[:, :, start:stop].float() @ keys) * scale
        if i2t is not None and request.text_normalization == "log":  # log of the head mean of exp(scores)
            i2t[:, start:stop] = torch.logsumexp(scores[..., text], dim=1) - math.log(h)
            if i2i is None:
                continue
        probs = scores.softmax(-1).mean(1)  # (B, rows, L): the mean over heads, as it goes
        if i2i is not None:
            block = probs[..., image]
            i2i[:, start:stop] = block / block.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        if i2t is not None and request.text_normalization == "softmax":
            i2t[:, start:stop] = probs[..., text]
    if i2i is not None:
        store.image_to_image[layer] = i2i
    if i2t is not None:
        store.image_to_text[layer] = i2t


@functools.cache
def _recording_classes() -> dict[type, type]:
    """Processor class -> its recording subclass (built on first use: diffusers is imported
    lazily). Each subclass keeps its parent's ``__call__`` signature, which diffusers reads to
    decide which keyword arguments the processor takes."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    classes: dict[type, type] = {}

    class RecordingJointAttnProcessor(_Recording, JointAttnProcessor2_0):
        def __call__(
            self,
            attn: nn.Module,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            self._record(attn, hidden_states, encoder_hidden_states, None)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)

    classes[JointAttnProcessor2_0] = RecordingJointAttnProcessor
    try:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
    except ImportError:  # diffusers < 0.35: FLUX processors of another layout
        return classes

    class RecordingFluxAttnProcessor(_Recording, FluxAttnProcessor):
        def __call__(
            self,
            attn: nn.Module,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            image_rotary_emb: Any = None,
        ) -> Any:
            self._record(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    classes[FluxAttnProcessor] = RecordingFluxAttnProcessor
    return classes


class _Recording:
    """The recording half of a recording processor (mixed in before the diffusers processor)."""

    def __init__(self, original: Any, store: JointAttentionStore, request: JointRequest, layer: str) -> None:
        self.__dict__.update(original.__dict__)  # the original's settings (attention backend ...)
        self._diffuseg = (store, request, layer, _image_first(original))

    def _record(self, attn: nn.Module, hidden_states: torch.Tensor, ehs: torch.Tensor | None, rope: Any) -> None:
        store, request, layer, image_first = self._diffuseg
        with torch.no_grad():
            q, k, _, text_length = joint_probabilities(
                attn, hidden_states, ehs, image_first=image_first, text_length=store.text_length,
                image_rotary_emb=rope,
            )  # fmt: skip
            _record(store, request, layer, q, k, text_length, image_first)


def _recording_processor(original: Any, store: JointAttentionStore, request: JointRequest, layer: str) -> Any:
    """The recording processor that stands in for `original` at `layer`.

    Raises:
        ValueError: naming `layers`, if the layer's processor is not one this module records.
    """
    cls = _recording_classes().get(type(original))
    if cls is None:
        supported = ", ".join(c.__name__ for c in _recording_classes())
        raise ValueError(
            f"`layers` {layer!r} uses {type(original).__name__}; joint attention is recorded from {supported} "
            "(SD3, SD3.5 and FLUX transformers)."
        )
    return cls(original, store, request, layer)


def _text_length_hook(store: JointAttentionStore) -> Any:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        store.text_length = int(ehs.shape[1]) if ehs is not None else 0

    return hook


@contextlib.contextmanager
def record_joint(model: nn.Module, request: JointRequest) -> Iterator[JointAttentionStore]:
    """Record `request` during the forward passes inside the scope.

    Args:
        model: an ``SD3Transformer2DModel`` or ``FluxTransformer2DModel``.
        request: the layers and blocks to record.

    Yields:
        The `JointAttentionStore` the passes fill (each pass replaces a layer's entry).

    Raises:
        ValueError: naming `layers`, with the model's layers, if one is not an attention layer of
            `model`.
    """
    originals = dict(model.attn_processors)
    layers = [k[: -len(".processor")] for k in originals]
    unknown = [layer for layer in request.layers if layer not in layers]
    if unknown:
        raise ValueError(
            f"`layers` has {', '.join(map(repr, unknown))}, not an attention layer of this "
            f"{type(model).__name__}; its {len(layers)} layers are {layers[0]!r} ... {layers[-1]!r} (`joint_layers`)."
        )
    store = JointAttentionStore()
    installed = dict(originals)
    for layer in request.layers:
        original = originals[f"{layer}.processor"]
        installed[f"{layer}.processor"] = _recording_processor(original, store, request, layer)
    hook = model.register_forward_pre_hook(_text_length_hook(store), with_kwargs=True)
    try:
        model.set_attn_processor(installed)  # diffusers pops from the dict it is given: a copy
        yield store
    finally:
        hook.remove()
        model.set_attn_processor(dict(originals))


def recording_bytes(image_tokens: int, text_tokens: int, request: JointRequest, batch: int = 1, heads: int = 1) -> int:
    """Bytes `record_joint` keeps for `request` (float32 blocks of every layer) plus one score
    tile, for a batch of `batch` images of `image_tokens` tokens and `text_tokens` text tokens.

    Not counted: the short-lived copies of one layer's queries and keys while it is recorded
    (about 2 x (N + T) x width x 4 bytes: 163 MB for SD3-medium in float32 at 1024 px), which
    live only during that layer's call (`benchmarks/bench_joint_attention.py` measures them)."""
    per_token = image_tokens * len(request.image_to_image) + text_tokens * len(request.image_to_text)
    kept = 4 * batch * image_tokens * per_token
    return kept + 4 * min(_TILE_ELEMENTS, heads * image_tokens * (image_tokens + text_tokens)) * batch
