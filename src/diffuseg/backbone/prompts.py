"""Prompt encoding for `DiffusionBackbone.encode_prompts`: tokenize, run the text encoder(s),
emphasise weighted tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["PromptEmbeddings", "encode_text", "encode_weighted", "weight_tokens"]

logger = logging.getLogger(__name__)


@dataclass
class PromptEmbeddings:
    """Encoded prompts.

    Attributes:
        embeds: (B, T, D) text-encoder hidden states fed to cross-attention.
        pooled: (B, D2) pooled embedding (SDXL-family `added_cond_kwargs`) or None.
        token_ids: (B, T) int64.
        tokens: per prompt, the T token strings.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    token_ids: torch.Tensor
    tokens: list[list[str]]


def encode_text(
    prompts: list[str],
    tokenizer: Any,
    text_encoder: nn.Module | None,
    tokenizer_2: Any,
    text_encoder_2: nn.Module | None,
    device: torch.device,
    dtype: torch.dtype,
) -> PromptEmbeddings:
    """Tokenize `prompts` with `tokenizer` (the one whose ids `Features.token_ids` hold) and run
    the text encoder(s): SD: the last hidden state; SDXL-family (with `text_encoder_2`): both
    encoders' penultimate hidden states concatenated, plus the second encoder's pooled
    projection. Embeddings in `dtype` on `device`."""
    enc = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    ids = enc.input_ids
    full = tokenizer(prompts, padding=False, truncation=False).input_ids
    for p, f in zip(prompts, full, strict=False):
        if len(f) > ids.shape[1]:
            logger.warning("prompt truncated to %d tokens: %r", ids.shape[1], p)
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    pooled = None
    if text_encoder_2 is None:
        embeds = text_encoder(ids.to(device))[0]
    else:
        hidden = []
        if text_encoder is not None:
            out1 = text_encoder(ids.to(device), output_hidden_states=True)
            hidden.append(out1.hidden_states[-2])
        ids2 = tokenizer_2(
            prompts,
            padding="max_length",
            max_length=tokenizer_2.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out2 = text_encoder_2(ids2.to(device), output_hidden_states=True)
        hidden.append(out2.hidden_states[-2])
        embeds = torch.cat(hidden, dim=-1)
        pooled = out2[0]
    return PromptEmbeddings(embeds.to(dtype), None if pooled is None else pooled.to(dtype), ids, tokens)


def encode_weighted(
    encode: Any,
    prompts: Sequence[str],
    token_weights: Sequence[Sequence[tuple[int, float]]] | None,
    columns: int | None = None,
) -> PromptEmbeddings:
    """``encode(prompts)`` with `token_weights` applied (`weight_tokens`, e0 = ``encode([""])``).

    Args:
        encode: ``encode(list[str]) -> PromptEmbeddings``, a backbone's own encoding.
        prompts: B prompts.
        token_weights: None, or per prompt (token position, weight) pairs.
        columns: weighted positions must be below this (e.g. the first text part of an MM-DiT);
            None: any of the T tokens.

    Raises:
        ValueError: if `token_weights` does not have one entry per prompt or a position is
            outside the allowed tokens.
    """
    prompts = list(prompts)
    if token_weights is not None and len(token_weights) != len(prompts):
        raise ValueError(f"`token_weights` must have one entry per prompt ({len(prompts)}), got {len(token_weights)}.")
    encoded = encode(prompts)
    if token_weights is not None and any(token_weights):
        if columns is not None and any(not 0 <= pos < columns for row in token_weights for pos, _ in row):
            raise ValueError(f"`token_weights` positions must index the first {columns} text tokens.")
        encoded.embeds = weight_tokens(encoded.embeds, encode([""]).embeds[0], token_weights)
    return encoded


def weight_tokens(
    embeds: torch.Tensor, empty: torch.Tensor, token_weights: Sequence[Sequence[tuple[int, float]]]
) -> torch.Tensor:
    """`embeds` (B, T, D) with each weighted token's embedding e replaced by ``e0 + w * (e - e0)``,
    e0 = `empty` (T, D), the empty prompt's embedding at that position (Compel's weighting; see
    `DiffusionBackbone.encode_prompts`); a new tensor.

    Raises:
        ValueError: if a position is outside the T tokens.
    """
    embeds = embeds.clone()
    t = embeds.shape[1]
    for row, pairs in enumerate(token_weights):
        for pos, weight in pairs:
            if not 0 <= pos < t:
                raise ValueError(f"`token_weights` position {pos} is outside the {t} prompt tokens.")
            embeds[row, pos] = empty[pos] + weight * (embeds[row, pos] - empty[pos])
    return embeds
