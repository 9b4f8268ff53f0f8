"""Names for the segments of unsupervised methods (DiffSeg, DiffCut) without a second model.

The method's one UNet pass runs with a naming prompt and records the cross-attention of its
tokens beside what the method itself reads; each segment then takes the class whose attention
wins its vote (`diffuseg.ops.naming`), and segments with the same class merge. Two sources of
names (`LABELS`):

* ``classes``: the query's class names, all in one prompt (`label_template` filled with the
  names joined by " and ");
* ``caption``: the query's caption is the prompt and its nouns are the classes
  (`diffuseg.labeling.nouns`), as DiffSeg's semantic labels (google/diffseg ``get_semantics``,
  which takes a BLIP caption as the UNet context). The reference finds a noun's token at its
  NLTK word index + 1, which breaks on multi-token words and punctuation; here each noun's
  forms are found in the caption by their token ids.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..ops.naming import cross_attention_maps, name_segments
from .nouns import caption_nouns
from .spans import fit_budget, joined_prompt, present_spans
from .vocabulary import Vocabulary, name_rows

__all__ = ["LABELS", "check_naming", "naming_classes", "naming_prompt", "named_labels"]

logger = logging.getLogger(__name__)

#: How an unsupervised method names its segments: "none" (segment ids, the papers'),
#: "classes" (the query's class names) or "caption" (the nouns of the query's caption).
LABELS = ("none", "classes", "caption")


def check_naming(label: str, voting: str, template: str) -> None:
    """Validate the naming settings of a method config (`label`, `voting`, `label_template`)."""
    from ..ops.naming import VOTINGS
    from .spans import check_template

    if label not in LABELS:
        raise ValueError(f"`label` must be one of {LABELS}, got {label!r}.")
    if voting not in VOTINGS:
        raise ValueError(f"`voting` must be one of {VOTINGS}, got {voting!r}.")
    check_template(template)


def naming_classes(label: str, query: Any) -> Vocabulary:
    """The classes that name the segments under `label`: the query's, or its caption's nouns.

    Raises:
        ValueError: for ``caption`` without a caption.
    """
    if label == "classes":
        return tuple(query.classes)
    if label == "caption":
        if not query.caption:
            raise ValueError(
                "`label` 'caption' names segments from the query's caption, and this query has none; "
                "give a caption (CLI: --caption) or label by class names."
            )
        nouns = caption_nouns(query.caption)
        if not nouns:
            logger.warning("the caption %r has no nouns: the segments stay unnamed.", query.caption)
        return nouns
    return ()


def naming_prompt(tokenizer: Any, template: str, label: str, query: Any) -> str | None:
    """The pass's prompt for naming: the class names joined, or the caption (cut to the token
    budget); None when there is nothing to name with (no classes, no caption).

    Raises:
        ValueError: if the class names do not fit the text encoder's token budget (how many fit).
    """
    if label == "classes":
        rows = name_rows(query.classes)
        return joined_prompt(tokenizer, template, [n for _, n in rows]) if rows else None
    if label == "caption" and query.caption:
        return fit_budget(tokenizer, query.caption)
    return None


def named_labels(
    labels: torch.Tensor, features: Any, classes: Vocabulary, voting: str
) -> tuple[torch.Tensor, list[str]] | None:
    """Segment ids -> class indices by cross-attention vote.

    Args:
        labels: (H, W) int64 segment ids at the model input size.
        features: the one-image `Features` of a pass run with `naming_prompt` and cross-attention.
        classes: the naming classes (`naming_classes`; label id = position).
        voting: see `diffuseg.ops.naming.VOTINGS`.

    Returns:
        ((H, W) int64 class indices into `classes`, the class display names), or None (with a
        warning) when no class name is found in the prompt or nothing was recorded.
    """
    rows = name_rows(classes)
    cross = {hw: m[0] for hw, m in features.by_resolution("cross").items()}
    if not rows or not cross:
        logger.warning("no class names or no cross-attention recorded: the segments stay unnamed.")
        return None
    spans = present_spans(features.tokenizer, features.token_ids[0].tolist(), [n for _, n in rows])
    found = [(k, span) for (k, _), span in zip(rows, spans, strict=True) if span]
    missing = sorted({n for (_, n), span in zip(rows, spans, strict=True) if not span})
    if missing:
        logger.warning(
            "names %s are not in the prompt's tokens (cut at the token budget?); they name nothing.", missing
        )
    if not found:
        return None
    per_name = cross_attention_maps(cross, [span for _, span in found], tuple(labels.shape))
    per_class = torch.zeros((len(classes), *labels.shape))  # a class without a map (background) gets 0
    for (k, _), m in zip(found, per_name, strict=True):
        per_class[k] = torch.maximum(per_class[k], m)
    return name_segments(labels, per_class, voting), [c[0] for c in classes]
