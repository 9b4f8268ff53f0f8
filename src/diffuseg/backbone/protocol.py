"""The `Backbone` protocol: what methods, the segmenter, the class filter and the demo may ask of
a diffusion model, whatever its architecture; and the small records it is planned to speak in.

Today's implementation is `DiffusionBackbone` (a diffusers UNet, VAE and CLIP text encoders);
a diffusion-transformer implementation (SD3 / SD3.5 joint attention, FLUX) is planned behind the
same protocol (issue 24; `docs/backbone_seam.md` has the inventory of what callers use today,
the members still to come and the migration steps).

`Backbone` requires only what `DiffusionBackbone` provides (``isinstance(DiffusionBackbone(...),
Backbone)`` holds): besides the pass itself, its `layer_map` (where features are, by role: a
`LayerMap` of `AttentionLayer`s) and the noise / prediction members the diffusion class filter
scores with. `PromptTokens` is the record of a member planned next (each text token's encoder
and position); it is defined here, with its known answers tested, before any backbone returns
it.

Nothing here names a module of a particular architecture: module paths are opaque strings that
a backbone hands out and takes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from ..imageio import ImageInput
from .features import FeatureRequest, Features
from .prompts import PromptEmbeddings

__all__ = ["ATTENTION_KINDS", "AttentionKind", "AttentionLayer", "Backbone", "LayerMap", "PromptTokens"]

#: What an attention map's image-token queries attend to: "image" (image->image keys) or
#: "text" (image->text keys, one column per text token).
AttentionKind = Literal["image", "text"]
ATTENTION_KINDS: tuple[str, ...] = ("image", "text")


def _check_kind(kind: Any) -> str:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"`kind` must be one of {ATTENTION_KINDS}, got {kind!r}.")
    return kind


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    return value


@dataclass(frozen=True)
class AttentionLayer:
    """One attention map a backbone can record: image-token queries against the keys of `kind`.

    A UNet has one module per kind (its self- and its cross-attention); a joint-attention layer
    of an MM-DiT is one module that yields both kinds (two `AttentionLayer`s, one `path`).

    Attributes:
        path: where the backbone records it; opaque outside `backbone/` (given back in a
            request, never parsed).
        kind: "image" (rows over image keys, (N, N)) or "text" (rows over text keys, (N, T)).
        stride: latent cells per token along each side: for a latent (h, w) the layer's token
            grid is (ceil(h / stride), ceil(w / stride)), N = its area. UNet: 2 ** (the
            downsamplers before the layer); MM-DiT: the patch size (2 for SD3 and FLUX).
        heads: attention heads (a map is (heads, N, M) before heads are averaged).

    Raises:
        ValueError: on an empty `path`, an unknown `kind`, or `stride` / `heads` below 1.
    """

    path: str
    kind: AttentionKind
    stride: int = 1
    heads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"`path` must be a non-empty str, got {self.path!r}.")
        _check_kind(self.kind)
        _positive_int(self.stride, "stride")
        _positive_int(self.heads, "heads")

    def grid(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid of this layer for a latent of `latent_size` (h, w), each >= 1."""
        h, w = (_positive_int(s, "latent_size") for s in latent_size)
        return -(-h // self.stride), -(-w // self.stride)


@dataclass(frozen=True)
class LayerMap:
    """Where a backbone's features are, by role: what a method asks for instead of module names.

    Attributes:
        attention: every recordable attention map, in forward order; (path, kind) pairs unique.
        feature_layer: the module whose output is the single feature map a method reads (the
            UNet's deepest encoder self-attention, DiffCut's module; on an MM-DiT a middle
            block's image tokens, chosen per family), or None when the model has none.
        decoder_outputs: the modules whose outputs are multi-block features, in forward order
            (the UNet's up blocks, which MaskDiffusion's ``feature_blocks`` index; on an MM-DiT
            every block's image tokens).

    Raises:
        ValueError: on a repeated (path, kind) pair or a repeated or empty output path.
    """

    attention: tuple[AttentionLayer, ...] = ()
    feature_layer: str | None = None
    decoder_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", tuple(self.attention))
        object.__setattr__(self, "decoder_outputs", tuple(self.decoder_outputs))
        if not all(isinstance(a, AttentionLayer) for a in self.attention):
            raise ValueError("`attention` must hold `AttentionLayer`s.")
        pairs = [(a.path, a.kind) for a in self.attention]
        if len(set(pairs)) != len(pairs):
            raise ValueError("`attention` names a (path, kind) pair twice.")
        outputs = self.decoder_outputs
        if not all(isinstance(p, str) and p for p in outputs) or len(set(outputs)) != len(outputs):
            raise ValueError(f"`decoder_outputs` must be distinct non-empty paths, got {outputs!r}.")

    def layers(self, kind: AttentionKind) -> tuple[AttentionLayer, ...]:
        """The attention maps of `kind`, in forward order (empty if the model has none)."""
        _check_kind(kind)
        return tuple(a for a in self.attention if a.kind == kind)

    def levels(self, kind: AttentionKind) -> tuple[tuple[str, ...], ...]:
        """Paths of the `kind` maps grouped by token grid, coarsest (largest stride) first, in
        forward order within a level. SD 1.x at 512 px: 8, 16, 32, 64 tokens a side; an MM-DiT:
        one level holding every layer.

        Raises:
            ValueError: on an unknown `kind` or a model without maps of that kind.
        """
        found = self.layers(kind)
        if not found:
            raise ValueError(f"this model has no image->{kind} attention layers.")
        strides = sorted({a.stride for a in found}, reverse=True)
        return tuple(tuple(a.path for a in found if a.stride == s) for s in strides)

    def select(self, kind: AttentionKind, indices: Sequence[int] | None) -> tuple[str, ...]:
        """Paths of the `kind` maps at `indices` of `layers` (forward order, 0 = the first;
        negative counts from the end); None = every one. How a method names the layers it reads
        on a model with one token grid (an MM-DiT: the i-th joint attention layer; SD3.5's
        image-only ``attn2`` layers count among the image maps only).

        Raises:
            ValueError: naming `layers`, the indices and the valid range.
        """
        paths = tuple(a.path for a in self.layers(kind))
        if indices is None:
            return paths
        bad = [i for i in indices if not -len(paths) <= i < len(paths)]
        if bad or not indices:
            raise ValueError(
                f"`layers` {tuple(indices)!r} name no image->{kind} layer of this model: it has {len(paths)}, "
                f"indices 0..{len(paths) - 1} (or -{len(paths)}..-1 from the end)."
            )
        return tuple(dict.fromkeys(paths[i] for i in indices))

    def finest(self, kind: AttentionKind) -> tuple[str, ...]:
        """The `kind` paths on the finest token grid (the last of `levels`)."""
        return self.levels(kind)[-1]

    def grid(self, path: str, latent_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid of the attention layer at `path` for a latent of `latent_size`.

        Raises:
            ValueError: if no attention layer has that path.
        """
        for a in self.attention:
            if a.path == path:
                return a.grid(latent_size)
        raise ValueError(f"no attention layer at {path!r} (this map has {len(self.attention)}).")


@dataclass(frozen=True)
class PromptTokens:
    """The text tokens of one prompt in the order the model's attention sees them: index k is
    column k of every image->text map.

    SD 1.x / 2.x: 77 "clip" tokens; SDXL: 77 "clip" (its two CLIP encoders share positions and
    are joined along features); SD3 / SD3.5: 77 "clip" then 256 "t5"; FLUX: 512 "t5".

    Attributes:
        ids: token ids, each in its own encoder's vocabulary (ints >= 0).
        strings: each token as its tokenizer spells it.
        encoders: the encoder each token belongs to (e.g. "clip", "t5").
        positions: each token's position in its encoder's own sequence (0 = its first token,
            e.g. CLIP's start token); (encoder, position) pairs are unique.

    Raises:
        ValueError: on fields of different lengths, negative ids or positions, empty encoder
            names, or a repeated (encoder, position) pair.
    """

    ids: tuple[int, ...]
    strings: tuple[str, ...]
    encoders: tuple[str, ...]
    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("ids", "strings", "encoders", "positions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.ids)
        if not len(self.strings) == len(self.encoders) == len(self.positions) == n:
            raise ValueError("`ids`, `strings`, `encoders` and `positions` must have one entry per token.")
        if any(int(v) < 0 for v in (*self.ids, *self.positions)):
            raise ValueError("token ids and positions must be >= 0.")
        if not all(isinstance(e, str) and e for e in self.encoders):
            raise ValueError("encoder names must be non-empty strs.")
        if len(set(zip(self.encoders, self.positions, strict=True))) != n:
            raise ValueError("an (encoder, position) pair occurs twice.")

    @classmethod
    def of(cls, encoder: str, ids: Sequence[int], strings: Sequence[str]) -> PromptTokens:
        """One encoder's tokens at positions 0, 1, ... (join encoders with ``+``)."""
        ids = [int(i) for i in ids]
        return cls(tuple(ids), tuple(strings), (encoder,) * len(ids), tuple(range(len(ids))))

    def __add__(self, other: PromptTokens) -> PromptTokens:
        """`self`'s tokens, then `other`'s (SD3: ``clip + t5``)."""
        if not isinstance(other, PromptTokens):
            return NotImplemented
        return PromptTokens(
            self.ids + other.ids,
            self.strings + other.strings,
            self.encoders + other.encoders,
            self.positions + other.positions,
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def encoder_names(self) -> tuple[str, ...]:
        """The encoders present, in order of their first token."""
        return tuple(dict.fromkeys(self.encoders))

    def ids_of(self, encoder: str) -> tuple[int, ...]:
        """`encoder`'s ids in its own order (what its tokenizer's span finder reads); () if absent."""
        pairs = sorted((p, i) for e, p, i in zip(self.encoders, self.positions, self.ids, strict=True) if e == encoder)
        return tuple(i for _, i in pairs)

    def columns(self, encoder: str, positions: Sequence[int]) -> list[int]:
        """The attention columns of `encoder`'s tokens at `positions` (a span found in its ids).

        Raises:
            ValueError: if a position is not among `encoder`'s tokens.
        """
        index = {(e, p): k for k, (e, p) in enumerate(zip(self.encoders, self.positions, strict=True))}
        missing = [p for p in positions if (encoder, p) not in index]
        if missing:
            raise ValueError(f"positions {missing} are not tokens of encoder {encoder!r} in this prompt.")
        return [index[(encoder, p)] for p in positions]


@runtime_checkable
class Backbone(Protocol):
    """A text-to-image diffusion model that runs one pass over a batch of images and records
    what a `FeatureRequest` asks for.

    The members every implementation has today (all of them `DiffusionBackbone`'s, unchanged).
    ``isinstance(x, Backbone)`` checks only that each member exists; the signatures below are the
    contract (and are compared with `DiffusionBackbone`'s in the tests).
    """

    @property
    def name(self) -> str:
        """Where the model came from (hub id or path), for reports; may be ""."""
        ...

    @property
    def family(self) -> str:
        """The model family that selects method presets ("sd1", "sd2", "sdxl", "toy", "other")."""
        ...

    @property
    def device(self) -> torch.device:
        """The device the denoiser's weights are on."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's weight dtype; latents and text embeddings are returned in it."""
        ...

    @property
    def native_size(self) -> int:
        """The model input side, in pixels, the model was trained at (512 for SD 1.x)."""
        ...

    @property
    def size_multiple(self) -> int:
        """Model input sides must be multiples of this (pixels per token of the coarsest grid)."""
        ...

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD's VAE)."""
        ...

    @property
    def num_train_timesteps(self) -> int:
        """Timesteps are ints in [0, num_train_timesteps)."""
        ...

    @property
    def layer_map(self) -> LayerMap:
        """Where the model's features are, by role: its attention maps of each kind with their
        token grids, the single feature layer, the multi-block outputs. Methods plan their
        `FeatureRequest` from it instead of naming modules."""
        ...

    @property
    def prompt_tokenizer(self) -> Any:
        """The tokenizer whose ids `Features.token_ids` hold; methods build prompts within its
        budget and find class-name spans with it (a CLIP tokenizer on every family today)."""
        ...

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Backbone:
        """Move every component to `device` and/or `dtype`; returns self."""
        ...

    def preprocess(
        self,
        images: Sequence[ImageInput],
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Crop and resize images to model input: (B, 3, H, W) float32 in [0, 1], H and W
        multiples of `size_multiple` (`image_size` None = `native_size`), and one JSON-able meta
        dict per image (input size, crop box, model size)."""
        ...

    def encode_images(
        self,
        pixels: torch.Tensor,
        sample: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Latents (B, C, H / f, W / f) in `dtype` of pixels (B, 3, H, W) float in [0, 1],
        f = `vae_scale_factor`: the posterior "mean" or a "sample" drawn with `generator` (one,
        or one per image), scaled (and shifted) as the denoiser expects."""
        ...

    def encode_prompts(
        self, prompts: Sequence[str], token_weights: Sequence[Sequence[tuple[int, float]]] | None = None
    ) -> PromptEmbeddings:
        """Tokenize and encode B prompts: embeds (B, T, D) in `dtype`, token ids (B, T) int64;
        `token_weights` per prompt (position, weight) pairs move a token's embedding e to
        e0 + w (e - e0), e0 the empty prompt's."""
        ...

    def check_timestep(self, timestep: int) -> int:
        """`timestep` if it is an int in [0, num_train_timesteps); else `ValueError`."""
        ...

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """`latents` (B, C, h, w) as `encode_images` returns them, noised to `timestep` with
        `noise` (B, C, h, w): the model's forward process; same shape and dtype."""
        ...

    def predict(
        self, latents: torch.Tensor, timestep: int, prompt: PromptEmbeddings, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """One plain denoiser call: its prediction (B, C, h, w) for noised `latents` (B, C, h, w)
        at `timestep`, conditioned on `prompt`'s B rows, for model input `image_size` (H, W)."""
        ...

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """What `predict` should return, (B, C, h, w), for clean `latents` noised with `noise`
        (both (B, C, h, w)) by `add_noise` at `timestep` (e.g. the noise, or a velocity)."""
        ...

    def record_bytes(self, request: FeatureRequest, model_size: tuple[int, int], rows: int = 1) -> int:
        """The memory estimate: bytes of float32 maps that recording `request` for `rows` prompt
        rows at model input `model_size` (H, W) allocates, from the model's structure alone."""
        ...

    def extract(
        self,
        images: ImageInput | Sequence[ImageInput] | torch.Tensor,
        request: FeatureRequest,
        prompts: str | Sequence[str] = "",
        timestep: int = 300,
        *,
        image_size: int | None = None,
        resize_mode: Literal["crop", "squash", "keep_aspect", "short_side"] = "crop",
        add_noise: bool = False,
        shared_noise: bool = False,
        latent_mode: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        prompts_per_image: int = 1,
        token_weights: Sequence[Sequence[tuple[int, float]]] | None = None,
    ) -> Features:
        """One denoiser pass over B images with B * `prompts_per_image` prompt rows
        (image-major) at `timestep`, the latent noised to it when `add_noise`, recording what
        `request` asks for: `Features` with attention maps in float32."""
        ...
