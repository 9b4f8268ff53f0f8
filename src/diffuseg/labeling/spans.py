"""Prompts for class names and the token positions of each name in a tokenized prompt.

Positions are found by matching each name's token ids as a contiguous sub-sequence of the
prompt's ids, never by word-position arithmetic (DiffSeg's reference maps NLTK word indices to
CLIP token indices, which breaks on multi-token words such as "diningtable" -> din|ing|table).

The tokenizers are Hugging Face `CLIPTokenizer`s (the backbone's ``tokenizer``, or
``tokenizer_2`` when the first is None). CLIP's tokenizer lowercases, splits text into words,
digits and punctuation runs before BPE, and marks the last token of each word with ``</w>``;
so a name's ids alone equal its ids inside a prompt ("Cat" and "cat." both hold ``cat</w>``),
and a match that starts right after a word-final token cannot be the tail of a longer word
("cat" does not match inside "bobcat").
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = [
    "PLACEHOLDER",
    "check_template",
    "class_prompt",
    "fill_template",
    "find_spans",
    "fit_budget",
    "present_spans",
    "joined_prompt",
    "name_ids",
    "part_columns",
    "prompt_budget",
    "text_columns",
    "token_budget",
    "token_spans",
]

logger = logging.getLogger(__name__)

#: The placeholder a prompt template holds exactly once; `fill_template` replaces it.
PLACEHOLDER = "{class}"

_WORD_END = "</w>"


#: tokenizer -> {(vocabulary size, text): ids}: names and prompts are tokenized again on every
#: plan and segmentation of a query; the vocabulary size keys out tokens added since.
_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], tuple[int, ...]]] = weakref.WeakKeyDictionary()
_IDS_KEPT = 4096  # texts per tokenizer; the memo starts afresh beyond


def _ids(tokenizer: Any, text: str) -> list[int]:
    try:
        memo = _IDS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced
        memo = {}
    key = (len(tokenizer), text)
    if key not in memo:
        if len(memo) >= _IDS_KEPT:
            memo.clear()
        memo[key] = tuple(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    return list(memo[key])


def name_ids(tokenizer: Any, name: str) -> list[int]:
    """The token ids of `name` alone, without BOS/EOS.

    Raises:
        ValueError: if `name` tokenizes to nothing (empty or whitespace only).
    """
    ids = _ids(tokenizer, name)
    if not ids:
        raise ValueError(f"class name {name!r} tokenizes to nothing.")
    return ids


def token_budget(tokenizer: Any) -> int:
    """How many prompt tokens the text encoder sees: ``model_max_length`` less BOS and EOS
    (75 for CLIP's 77)."""
    return int(tokenizer.model_max_length) - 2


def find_spans(
    token_ids: Sequence[int],
    names_ids: Sequence[Sequence[int]],
    word_starts: Sequence[bool] | None = None,
) -> list[list[int]]:
    """The positions of every occurrence of each name in `token_ids`.

    Longer names match first and occurrences never overlap: positions claimed by a longer name
    are not given to a shorter one (with "cat" and "cat food", the "cat" of "cat food" belongs
    to "cat food"). Names with equal ids (e.g. "Cat" and "cat") get the same positions.

    Args:
        token_ids: the prompt's ids (L,), with or without BOS/padding; positions index it.
        names_ids: per name, its ids (see `name_ids`); an empty sequence never matches.
        word_starts: optional (L,) flags, True where a word starts; a match must start at one.

    Returns:
        per name, a sorted flat list of the positions of all its occurrences ([] if none).
    """
    seq = [int(t) for t in token_ids]
    names = [tuple(int(t) for t in ids) for ids in names_ids]
    if word_starts is not None and len(word_starts) != len(seq):
        raise ValueError(f"`word_starts` has {len(word_starts)} flags for {len(seq)} tokens.")
    claimed = [False] * len(seq)
    found: dict[tuple[int, ...], list[int]] = {}
    # longest first; ties keep the caller's order
    for ids in sorted(dict.fromkeys(names), key=len, reverse=True):
        positions: list[int] = []
        n = len(ids)
        i = 0
        while n and i + n <= len(seq):
            if tuple(seq[i : i + n]) == ids and not any(claimed[i : i + n]) and (word_starts is None or word_starts[i]):
                positions.extend(range(i, i + n))
                claimed[i : i + n] = [True] * n
                i += n
            else:
                i += 1
        found[ids] = positions
    return [list(found[ids]) for ids in names]


def _word_starts(tokenizer: Any, token_ids: Sequence[int]) -> list[bool] | None:
    """True where a word starts: the first position, after a special token, or after a
    word-final (``</w>``) token. None for a tokenizer without the ``</w>`` convention."""
    ids = [int(t) for t in token_ids]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    if not any(tok.endswith(_WORD_END) for i, tok in zip(ids, tokens, strict=True) if i not in special):
        return None
    return [k == 0 or ids[k - 1] in special or tokens[k - 1].endswith(_WORD_END) for k in range(len(ids))]


def present_spans(tokenizer: Any, token_ids: Sequence[int], names: Sequence[str]) -> list[list[int]]:
    """Like `token_spans`, but a name that does not occur gets [] instead of an error."""
    return find_spans(token_ids, [name_ids(tokenizer, n) for n in names], _word_starts(tokenizer, token_ids))


def token_spans(tokenizer: Any, token_ids: Sequence[int], names: Sequence[str]) -> list[list[int]]:
    """The positions of each name's tokens in a tokenized prompt (see `find_spans`).

    Args:
        tokenizer: the backbone's CLIP tokenizer.
        token_ids: the prompt's ids (L,) as the text encoder sees them (BOS included, so
            positions index its output states).
        names: the class names (and synonyms) to find.

    Returns:
        per name, a sorted flat list of positions.

    Raises:
        ValueError: if a name does not occur (it may have been cut off at the text encoder's
            token budget), or a name tokenizes to nothing.
    """
    spans = present_spans(tokenizer, token_ids, names)
    missing = [n for n, span in zip(names, spans, strict=True) if not span]
    if missing:
        raise ValueError(
            f"class names {missing} do not occur in the prompt's tokens; the prompt may have been "
            f"truncated at the text encoder's {token_budget(tokenizer)}-token budget."
        )
    return spans


def part_columns(
    parts: Sequence[Any], names: Sequence[str], encoders: Sequence[str] = ("clip", "t5")
) -> list[list[int]]:
    """Per name, the columns of a joint text axis its tokens take (every occurrence, in each part
    whose encoder is in `encoders`; `find_spans`' rules within a part), [] if absent.

    Args:
        parts: the text axis's parts (``diffuseg.backbone.mmdit.TextPart``: ``encoder``,
            ``offset``, ``token_ids``, ``tokenizer``), e.g. SD3's CLIP tokens then its T5 tokens.
        names: the class names (and synonyms) to find.
        encoders: the parts to search ("clip", "t5").

    Raises:
        ValueError: naming `encoders`, if it selects none of `parts`.
    """
    chosen = [p for p in parts if p.encoder in encoders]
    if not chosen:
        raise ValueError(f"`encoders` {tuple(encoders)} selects none of the text parts {[p.encoder for p in parts]}.")
    columns: list[list[int]] = [[] for _ in names]
    for part in chosen:
        for cols, span in zip(columns, present_spans(part.tokenizer, part.token_ids, names), strict=True):
            cols.extend(part.offset + i for i in span)
    return columns


def _chosen_parts(parts: Sequence[Any], encoders: Sequence[str]) -> list[Any]:
    """The parts whose encoder is in `encoders`.

    Raises:
        ValueError: naming `text_encoders`, its value and the parts the prompts have, if one of
            `encoders` is not among `parts`.
    """
    have = [p.encoder for p in parts]
    if any(e not in have for e in encoders):
        raise ValueError(
            f"`text_encoders` {tuple(encoders)} asks for text this model's prompts do not have: their text "
            f"parts are {have or 'none'} (FLUX has only T5 tokens, SD3 loaded with `drop_t5` only CLIP "
            "tokens, a UNet no parts to choose from); set `text_encoders` to parts it has, or None for its "
            "first part (a model family's preset may have set it)."
        )
    return [p for p in parts if p.encoder in encoders]


def prompt_budget(backbone: Any, encoders: Sequence[str] | None = None) -> tuple[Any, int]:
    """The tokenizer a method writes its prompts with and their token budget.

    Args:
        backbone: the model; with `encoders`, a diffusion transformer (``text_parts(prompt)``).
        encoders: None: the backbone's ``prompt_tokenizer`` and its `token_budget` (the text
            axis's first part). Otherwise the parts the method reads class tokens in: the
            tokenizer of the longest of them and its columns less 2 (BOS / EOS), so a prompt
            longer than SD3's CLIP tokens keeps its class names in the T5 part.

    Raises:
        ValueError: naming `text_encoders`, if the model's prompts lack one of `encoders`.
    """
    if encoders is None:
        return backbone.prompt_tokenizer, token_budget(backbone.prompt_tokenizer)
    layout = getattr(backbone, "text_parts", None)
    parts = layout("") if callable(layout) else []
    longest = max(_chosen_parts(parts, encoders), key=lambda p: len(p.token_ids))
    return longest.tokenizer, len(longest.token_ids) - 2


def text_columns(
    features: Any, row: int, names: Sequence[str], encoders: Sequence[str] | None = None
) -> list[list[int]]:
    """Per name, the columns of row `row`'s image->text maps (the T axis) its tokens take.

    Args:
        features: `diffuseg.backbone.features.Features` (``tokenizer``, ``token_ids`` and, for
            `encoders`, ``text_parts``).
        row: the prompt row.
        names: the class names (and synonyms) to find.
        encoders: None: the text axis's first part (SD3: CLIP; FLUX: T5; a UNet's only
            text), `token_spans` over ``features.token_ids[row]``. Otherwise every occurrence in
            each part of ``features.text_parts[row]`` whose encoder is in `encoders`
            (`part_columns`): a name's columns from several parts are averaged like its tokens.

    Raises:
        ValueError: if a name occurs in none of the parts read (the prompt may have been cut at
            a part's length); naming `text_encoders` if the row lacks one of `encoders`.
    """
    if encoders is None:
        return token_spans(features.tokenizer, features.token_ids[row].tolist(), names)
    parts = features.text_parts[row] if row < len(features.text_parts) else ()
    chosen = _chosen_parts(parts, encoders)
    columns = part_columns(chosen, names, encoders)
    missing = [n for n, cols in zip(names, columns, strict=True) if not cols]
    if missing:
        lengths = ", ".join(f"{p.encoder} {len(p.token_ids)}" for p in chosen)
        raise ValueError(
            f"class names {missing} do not occur in the prompt's tokens of `text_encoders` {tuple(encoders)}; "
            f"the prompt may have been cut at those parts' lengths ({lengths} tokens)."
        )
    return columns


def check_template(template: str) -> str:
    """Validate a prompt template: a string holding ``{class}`` exactly once. Returns it.

    Raises:
        ValueError: naming `template` otherwise.
    """
    if not isinstance(template, str) or template.count(PLACEHOLDER) != 1:
        count = template.count(PLACEHOLDER) if isinstance(template, str) else 0
        raise ValueError(
            f"`template` must hold the placeholder {PLACEHOLDER!r} exactly once, got {template!r} "
            f"({count} times); e.g. 'a photograph of a {PLACEHOLDER}'."
        )
    return template


def fill_template(template: str, name: str) -> str:
    """`template` with ``{class}`` replaced by `name` (plain replacement: other braces stay)."""
    return check_template(template).replace(PLACEHOLDER, name)


def fit_budget(tokenizer: Any, text: str) -> str:
    """`text`, cut to the text encoder's token budget if it is longer (a warning says so)."""
    budget = token_budget(tokenizer)
    n = len(_ids(tokenizer, text))
    if n <= budget:
        return text
    logger.warning("the prompt was cut to the text encoder's %d-token budget (it has %d tokens).", budget, n)
    return _cut(tokenizer, text, budget)


def _cut(tokenizer: Any, text: str, keep: int) -> str:
    """`text` cut to (at most) its first `keep` tokens: the original characters up to the end
    of the last kept token where the tokenizer gives offsets, else the decoded ids."""
    if keep <= 0:
        return ""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return text[: enc["offset_mapping"][keep - 1][1]].rstrip()
    except (NotImplementedError, KeyError, TypeError, ValueError):  # slow tokenizers: no offsets
        return tokenizer.decode(_ids(tokenizer, text)[:keep]).strip()


def class_prompt(
    tokenizer: Any,
    template: str,
    name: str,
    caption: str | None = None,
    joiner: str = ", ",
    budget: int | None = None,
) -> str:
    """The prompt for one class: `template` filled with `name`, then ``joiner + caption``.

    A caption that makes the prompt exceed the budget (`budget`, None = `token_budget`) is cut
    to the tokens that fit (a warning is logged); dropped entirely if none fit.

    Raises:
        ValueError: if the filled template alone exceeds the budget, or `template` is invalid.
    """
    budget = token_budget(tokenizer) if budget is None else budget
    filled = fill_template(template, name)
    n_fixed = len(_ids(tokenizer, filled))
    if n_fixed > budget:
        raise ValueError(
            f"the prompt template {template!r} with the class {name!r} takes {n_fixed} tokens; "
            f"the text encoder's budget is {budget}."
        )
    if caption is None or not caption.strip():
        return filled
    prompt = filled + joiner + caption
    if len(_ids(tokenizer, prompt)) <= budget:
        return prompt
    n_caption = len(_ids(tokenizer, caption))
    keep = budget - len(_ids(tokenizer, filled + joiner))
    cut = _cut(tokenizer, caption, keep)
    while cut and len(_ids(tokenizer, filled + joiner + cut)) > budget:
        keep -= 1
        cut = _cut(tokenizer, caption, keep)
    kept = len(_ids(tokenizer, cut)) if cut else 0
    logger.warning(
        "the caption was cut to %d of its %d tokens to fit the text encoder's %d-token budget "
        "after the template and the class %r.",
        kept,
        n_caption,
        budget,
        name,
    )
    return filled + joiner + cut if cut else filled


def joined_prompt(
    tokenizer: Any, template: str, names: Sequence[str], joiner: str = " and ", budget: int | None = None
) -> str:
    """One prompt for all classes: `template` filled with ``joiner.join(names)``
    (MaskDiffusion's prompt).

    Raises:
        ValueError: if `names` is empty, or the prompt exceeds the budget (`budget`, None =
            `token_budget`; saying how many of the classes, in order, fit).
    """
    check_template(template)
    if isinstance(names, str) or not names:
        raise ValueError(f"`names` must be a non-empty sequence of class names, got {names!r}.")
    budget = token_budget(tokenizer) if budget is None else budget
    prompt = fill_template(template, joiner.join(names))
    if len(_ids(tokenizer, prompt)) <= budget:
        return prompt
    fit = 0
    while fit < len(names) and len(_ids(tokenizer, fill_template(template, joiner.join(names[: fit + 1])))) <= budget:
        fit += 1
    raise ValueError(
        f"the class list does not fit the text encoder's {budget}-token budget: {fit} of the "
        f"{len(names)} classes fit; segment with fewer classes or one prompt per class."
    )
