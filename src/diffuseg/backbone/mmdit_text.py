"""The text axis of an MM-DiT prompt: which encoder's tokens take which columns, and the
pipeline's own prompt encoding (reference: ``mmdit_and_fast_ncut.md`` §A.0).

SD3 / SD3.5 put 77 CLIP tokens (CLIP-L and CLIP-G features side by side, one column per token)
then the T5 tokens on the text axis; FLUX its T5 tokens alone (CLIP gives only the pooled
vector). `text_parts` lays a prompt's columns out per encoder; `encode` runs the pipeline's
``encode_prompt`` with the same lengths, so columns and embeddings agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["T5_TOKENS", "TextPart", "text_parts", "encode", "first_tokenizer", "first_part_length", "t5_length"]

#: T5 tokens per prompt, by architecture: the pipelines' ``max_sequence_length`` defaults
#: (`StableDiffusion3Pipeline.encode_prompt` 256, `FluxPipeline.encode_prompt` 512).
T5_TOKENS = {"sd3": 256, "sd35": 256, "flux": 512}


@dataclasses.dataclass(frozen=True)
class TextPart:
    """One text encoder's share of the joint text axis of a prompt.

    Attributes:
        encoder: "clip" (SD3's CLIP-L / CLIP-G tokens, one column each) or "t5".
        offset: the first column of this part on the text axis (T) of `Features.cross_attention`.
        token_ids: the ids the encoder saw (BOS, padding included): column ``offset + i`` is
            token ``token_ids[i]``.
        tokenizer: the tokenizer that produced them.
    """

    encoder: str
    offset: int
    token_ids: tuple[int, ...]
    tokenizer: Any = dataclasses.field(compare=False, repr=False)


def t5_length(pipe: Any, family: str) -> int:
    """T5 tokens per prompt: `T5_TOKENS` of the architecture, or the T5 tokenizer's
    ``model_max_length`` where that is shorter (the toy MM-DiT's 32; real T5 tokenizers say 512).
    Without a T5 tokenizer (a pipeline saved without one) the pipeline's default."""
    tokenizer = pipe.tokenizer_2 if family == "flux" else pipe.tokenizer_3
    limit = getattr(tokenizer, "model_max_length", None)
    return min(T5_TOKENS[family], int(limit)) if isinstance(limit, int) and limit > 0 else T5_TOKENS[family]


def first_tokenizer(pipe: Any, family: str) -> Any:
    """The tokenizer of the text axis's first part (SD3: CLIP, FLUX: T5)."""
    return pipe.tokenizer_2 if family == "flux" else pipe.tokenizer


def first_part_length(pipe: Any, family: str) -> int:
    """Columns of the text axis's first part: SD3's CLIP tokens, FLUX's T5 tokens."""
    return t5_length(pipe, family) if family == "flux" else int(pipe.tokenizer_max_length)


def _ids(tokenizer: Any, prompt: str, length: int) -> tuple[int, ...]:
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    return tuple(int(i) for i in ids)


def text_parts(pipe: Any, family: str, prompt: str) -> list[TextPart]:
    """The parts of `prompt`'s text axis, as `encode` builds it: SD3 / SD3.5: the CLIP tokens
    (both CLIP encoders share the columns) then the T5 tokens (zeros, and left out here, when the
    pipeline has no T5 encoder); FLUX: the T5 tokens."""
    t5, first = t5_length(pipe, family), first_part_length(pipe, family)
    if family == "flux":
        return [TextPart("t5", 0, _ids(pipe.tokenizer_2, prompt, first), pipe.tokenizer_2)]
    clip = first
    parts = [TextPart("clip", 0, _ids(pipe.tokenizer, prompt, clip), pipe.tokenizer)]
    if pipe.text_encoder_3 is not None:
        parts.append(TextPart("t5", clip, _ids(pipe.tokenizer_3, prompt, t5), pipe.tokenizer_3))
    return parts


@torch.no_grad()
def encode(
    pipe: Any, family: str, prompts: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[str]]]:
    """The pipeline's encoding of `prompts`: embeds (B, T, C) over the whole text axis, the
    pooled embedding (B, P), and the first part's token ids (B, T1) int64 and strings."""
    prompts, t5 = list(prompts), t5_length(pipe, family)
    if family == "flux":
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, max_sequence_length=t5)
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False,
            max_sequence_length=t5,
        )  # fmt: skip
    first = [text_parts(pipe, family, p)[0] for p in prompts]
    ids = torch.tensor([part.token_ids for part in first], dtype=torch.long)
    tokens = [first_tokenizer(pipe, family).convert_ids_to_tokens(list(part.token_ids)) for part in first]
    return embeds, pooled, ids, tokens
