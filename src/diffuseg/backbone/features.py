"""What to record from a UNet pass (`FeatureRequest`) and what was recorded (`Features`)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["FeatureRequest", "Features"]

_NORMALIZATIONS = ("softmax", "none", "log")


def _merge_layers(a: bool | tuple[str, ...], b: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
    if a is True or b is True:
        return True
    if a is False:
        return b
    if b is False:
        return a
    return tuple(dict.fromkeys((*a, *b)))


@dataclass(frozen=True)
class FeatureRequest:
    """What one UNet pass should record.

    Attributes:
        self_attention: True for every self-attention (`attn1`) layer, or a tuple of fnmatch
            patterns over diffusers layer paths (e.g. ``"up_blocks.*attn1"``).
        cross_attention: the same for cross-attention (`attn2`) layers.
        hidden_states: diffusers module paths whose forward outputs are recorded with forward
            hooks (e.g. ``"down_blocks.2.attentions.1.transformer_blocks.3.attn1"``).
        normalization: ``"softmax"`` records attention probabilities (rows sum to 1);
            ``"none"`` records exp(QK^T / sqrt(d)) unnormalised (overflows to inf in float32
            once a logit passes ~88); ``"log"`` records the same unnormalised attention as its
            logarithm: log of the head mean of exp(QK^T / sqrt(d)) (or each head's logits),
            with layer means taken in log space (logaddexp), so nothing overflows and exp() of
            the record is the unnormalised attention (MaskDiffusion).
        average_heads: average heads at record time: (B*heads, N, M) -> (B, N, M).
        per_layer: keep one map per layer; otherwise a running mean per resolution.
        early_exit: stop the UNet as soon as everything requested has been recorded
            (DiffCut reads a down-block feature and needs no up blocks).
    """

    self_attention: bool | tuple[str, ...] = False
    cross_attention: bool | tuple[str, ...] = False
    hidden_states: tuple[str, ...] = ()
    normalization: Literal["softmax", "none", "log"] = "softmax"
    average_heads: bool = True
    per_layer: bool = False
    early_exit: bool = False

    def __post_init__(self) -> None:
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"`normalization` must be one of {_NORMALIZATIONS}, got {self.normalization!r}.")
        for name in ("self_attention", "cross_attention"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, (bool, tuple)):
                raise ValueError(f"`{name}` must be a bool or a tuple of patterns, got {value!r}.")
        if isinstance(self.hidden_states, (list, str)):
            hs = (self.hidden_states,) if isinstance(self.hidden_states, str) else self.hidden_states
            object.__setattr__(self, "hidden_states", tuple(hs))

    @property
    def is_empty(self) -> bool:
        """True if nothing is recorded (the UNet need not run at all)."""
        return not self.self_attention and not self.cross_attention and not self.hidden_states

    def wants_attention(self, layer: str) -> bool:
        """Whether the attention layer at diffusers path `layer` (ending attn1/attn2) is recorded."""
        kind = layer.rsplit(".", 1)[-1]
        sel = {"attn1": self.self_attention, "attn2": self.cross_attention}.get(kind, False)
        if isinstance(sel, bool):
            return sel
        return any(fnmatch.fnmatchcase(layer, p) for p in sel)

    def __or__(self, other: FeatureRequest) -> FeatureRequest:
        """The union of two requests, so several methods share one pass.

        Raises:
            ValueError: if the requests differ in `normalization`, `average_heads` or
                `per_layer` (one recorded tensor cannot satisfy both).
        """
        if not isinstance(other, FeatureRequest):
            return NotImplemented
        if self.is_empty:
            return other
        if other.is_empty:
            return self
        for name in ("normalization", "average_heads", "per_layer"):
            a, b = getattr(self, name), getattr(other, name)
            if (
                a != b
                and (self.self_attention or self.cross_attention)
                and (other.self_attention or other.cross_attention)
            ):
                raise ValueError(f"cannot combine requests with different `{name}`: {a!r} vs {b!r}.")
        attn_self = self if (self.self_attention or self.cross_attention) else other
        return FeatureRequest(
            self_attention=_merge_layers(self.self_attention, other.self_attention),
            cross_attention=_merge_layers(self.cross_attention, other.cross_attention),
            hidden_states=tuple(dict.fromkeys((*self.hidden_states, *other.hidden_states))),
            normalization=attn_self.normalization,
            average_heads=attn_self.average_heads,
            per_layer=attn_self.per_layer,
            early_exit=self.early_exit and other.early_exit,
        )


@dataclass
class Features:
    """What one UNet pass recorded, for a batch of B images.

    Attention maps are float32. With `average_heads`, self-attention maps are (B, N, N) and
    cross-attention maps (B, N, T); without, (B, heads, N, N) / (B, heads, N, T). N = h*w
    tokens of that layer, T = text tokens. Keys of `self_attention` / `cross_attention` are
    diffusers layer paths (per-layer mode) or ``"attn1@{h}x{w}"`` / ``"attn2@{h}x{w}"``
    (per-resolution means).

    Attributes:
        self_attention: recorded self-attention maps (see above).
        cross_attention: recorded cross-attention maps.
        hidden_states: module path -> forward output (B, C, h, w) or (B, N, C), float32.
        layer_sizes: key -> (h, w) token grid of every recorded map.
        layer_counts: key -> number of layers averaged into it (1 per layer in per-layer mode).
        images: (B, 3, H, W) float32 in [0, 1], the preprocessed model input.
        prompts: the B prompts.
        token_ids: (B, T) int64 token ids of the prompts.
        tokens: per prompt, the T token strings (the tokenizer's own spelling).
        tokenizer: the tokenizer that produced `token_ids` (methods find class-name token spans
            with it, `diffuseg.labeling.spans`), or None.
        text_parts: per row, the parts of its prompt's text axis T in column order, each with
            ``encoder`` ("clip" / "t5"), ``offset`` (its first column of T), ``token_ids`` and
            ``tokenizer`` (`diffuseg.backbone.mmdit_text.TextPart`): a diffusion transformer's
            (SD3: the CLIP tokens at offset 0, then the T5 tokens unless T5 was dropped; FLUX:
            the T5 tokens). Empty for a UNet, whose text axis is `token_ids` alone.
        latent_size: (h, w) of the VAE latent.
        timestep: the UNet timestep of the pass.
        normalization: how attention was normalised ("softmax", "none" or "log"; see
            `FeatureRequest.normalization`).
        meta: per-image JSON-serialisable facts (original size, crop box, file name...).
        layer_map: the recording backbone's `diffuseg.backbone.protocol.LayerMap` (where its
            features are by role: methods find their layers in `hidden_states` by it), or None
            for hand-built features (methods then fall back to their UNet path rules).
        derived: values methods compute from these maps that no setting of theirs changes
            (`derive`), kept with the features: re-segmenting from cached features with other
            post-processing settings does not compute them again. Views from `rows` share them.
    """

    self_attention: dict[str, torch.Tensor] = field(default_factory=dict)
    cross_attention: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_states: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    layer_counts: dict[str, int] = field(default_factory=dict)
    images: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    token_ids: torch.Tensor | None = None
    tokens: list[list[str]] = field(default_factory=list)
    tokenizer: Any = None
    text_parts: list[tuple[Any, ...]] = field(default_factory=list)
    latent_size: tuple[int, int] = (0, 0)
    timestep: int = 0
    normalization: str = "softmax"
    meta: list[dict[str, Any]] = field(default_factory=list)
    layer_map: Any = field(default=None, repr=False, compare=False)
    derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def derive(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per `key` for these features (see `derived`).

        Args:
            key: hashable; name the method and every input the value depends on, e.g.
                ``("diffseg", "anchor_kl", 16)``.
            compute: the function of these features.
        """
        if key not in self.derived:
            self.derived[key] = compute()
        return self.derived[key]

    @property
    def batch_size(self) -> int:
        """B, the number of images."""
        if self.images is not None:
            return int(self.images.shape[0])
        for d in (self.self_attention, self.cross_attention, self.hidden_states):
            for v in d.values():
                return int(v.shape[0])
        return 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the preprocessed model input."""
        if self.images is None:
            raise ValueError("these features carry no images.")
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def by_resolution(self, kind: Literal["self", "cross"] = "self") -> dict[tuple[int, int], torch.Tensor]:
        """Maps averaged over layers of equal token grid: (h, w) -> tensor, largest grid first.

        Per-layer maps are combined with equal weight per layer; per-resolution running means
        are weighted by the number of layers they hold, so both modes give the same answer.
        "log" maps (`FeatureRequest.normalization`) are averaged as exp() and stay logs.
        """
        maps = self.self_attention if kind == "self" else self.cross_attention
        log = self.normalization == "log"
        sums: dict[tuple[int, int], torch.Tensor] = {}
        counts: dict[tuple[int, int], int] = {}
        for key, value in maps.items():
            size = self.layer_sizes[key]
            n = self.layer_counts.get(key, 1)
            if log:
                term = value + math.log(n)
                sums[size] = torch.logaddexp(sums[size], term) if size in sums else term
            else:
                sums[size] = sums[size] + value * n if size in sums else value * n
            counts[size] = counts.get(size, 0) + n
        order = sorted(sums, key=lambda s: s[0] * s[1], reverse=True)
        if log:
            return {s: sums[s] - math.log(counts[s]) for s in order}
        return {s: sums[s] / counts[s] for s in order}

    def rows(self, start: int, stop: int) -> Features:
        """Rows [start, stop) (e.g. the P prompt rows of one image of a multi-prompt pass)."""
        if not 0 <= start < stop <= self.batch_size:
            raise IndexError(f"rows [{start}, {stop}) out of range for a batch of {self.batch_size}.")
        sl = slice(start, stop)

        def pick(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[sl] for k, v in d.items()}

        return Features(
            self_attention=pick(self.self_attention),
            cross_attention=pick(self.cross_attention),
            hidden_states=pick(self.hidden_states),
            layer_sizes=dict(self.layer_sizes),
            layer_counts=dict(self.layer_counts),
            images=None if self.images is None else self.images[sl],
            prompts=self.prompts[sl],
            token_ids=None if self.token_ids is None else self.token_ids[sl],
            tokens=self.tokens[sl],
            tokenizer=self.tokenizer,
            text_parts=self.text_parts[sl],
            latent_size=self.latent_size,
            timestep=self.timestep,
            normalization=self.normalization,
            meta=self.meta[sl],
            layer_map=self.layer_map,
            derived=self.derived.setdefault(("rows", start, stop), {}),
        )
