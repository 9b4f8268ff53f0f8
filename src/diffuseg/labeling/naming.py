"""Names for the segments of unsupervised methods (DiffSeg, DiffCut) without a second model.

The method's one UNet pass runs with a naming prompt and records the cross-attention of its
tokens beside what the method itself reads; each segment then takes the class whose attention
wins its vote (`diffuseg.ops.votes`), and segments with the same class merge. Two sources of
names (`LABELS`):

* ``classes``: the query's class names, all in one prompt (`label_template` filled with the
  names joined by " and ");
* ``clip`` (DiffCut's open-vocabulary recipe, `eval_diffcut_openvoc.py`, with a CLIP resource):
  no naming prompt; each segment's mean dense CLIP image feature against the class names' CLIP
  text embeddings (prompt templates averaged, synonyms by max);
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

from ..ops.masks import class_scores
from ..ops.votes import cross_attention_maps, name_segments
from .nouns import caption_nouns
from .settings import LABELS, check_naming
from .spans import fit_budget, joined_prompt, present_spans
from .vocabulary import Vocabulary, name_rows

__all__ = ["LABELS", "check_naming", "naming_classes", "naming_prompt", "named_labels", "clip_named_labels"]

logger = logging.getLogger(__name__)


def naming_classes(label: str, query: Any, features: Any) -> Vocabulary:
    """The classes that name the segments under `label`: the query's, or the nouns of the
    caption the pass was run with (`naming_prompt`).

    Raises:
        ValueError: for ``caption`` when the pass had no caption to run with.
    """
    if label in ("classes", "clip"):
        return tuple(query.classes)
    if label == "caption":
        if not features.cross_attention or not features.prompts or not features.prompts[0]:
            raise ValueError(
                "`label` 'caption' names segments from a caption, and this image has none: give the query a "
                "caption (CLI: --caption) or a captioner (CLI: --captioner PATH), or label by class names."
            )
        nouns = caption_nouns(features.prompts[0])
        if not nouns:
            logger.warning("the caption %r has no nouns: the segments stay unnamed.", features.prompts[0])
        return nouns
    return ()


def naming_prompt(tokenizer: Any, template: str, label: str, query: Any, caption: str | None = None) -> str | None:
    """The pass's prompt for naming: the class names joined, or the caption (`caption`, else
    the query's; cut to the token budget); None when there is nothing to name with.

    Raises:
        ValueError: if the class names do not fit the text encoder's token budget (how many fit).
    """
    if label == "classes":
        rows = name_rows(query.classes)
        return joined_prompt(tokenizer, template, [n for _, n in rows]) if rows else None
    caption = caption or query.caption
    if label == "caption" and caption:
        return fit_budget(tokenizer, caption)
    return None


def named_labels(
    labels: torch.Tensor, features: Any, classes: Vocabulary, voting: str
) -> tuple[torch.Tensor, list[str]] | None:
    """Segment ids -> class indices by cross-attention vote.

    Args:
        labels: (H, W) int64 segment ids at the model input size.
        features: the one-image `Features` of a pass run with `naming_prompt` and cross-attention.
        classes: the naming classes (`naming_classes`; label id = position).
        voting: see `diffuseg.ops.votes.VOTINGS`.

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
    # synonyms by max; attention is >= 0, so a class without a map (background) gets 0, not -inf
    per_class = class_scores(per_name, [k for k, _ in found], len(classes)).clamp_min(0)
    return name_segments(labels, per_class, voting), [c[0] for c in classes]


def clip_named_labels(
    labels: torch.Tensor, image: Any, classes: Vocabulary, clip: Any
) -> tuple[torch.Tensor, list[str]] | None:
    """Segment ids -> class indices by CLIP: each segment's mean dense CLIP feature against the
    class names' text embeddings (synonyms by max); segments with one class merge.

    Args:
        labels: (H, W) int64 segment ids.
        image: the image the labels are on (any size; features are resized to the labels).
        classes: the classes (label id = position); a class without a name other than
            "background" (the background class) is not a CLIP candidate.
        clip: a `diffuseg.labeling.clip.ClipScorer`.

    Returns:
        ((H, W) int64 class indices into `classes`, the display names), or None without classes.
    """
    import torch.nn.functional as F

    rows = name_rows(classes)
    if not rows:
        logger.warning("no class names: the segments stay unnamed.")
        return None
    dense = clip.dense_features(image)  # (D, h, w)
    dense = F.interpolate(dense[None], size=tuple(labels.shape), mode="bilinear", align_corners=False)[0]
    flat = labels.reshape(-1).long()
    s = int(flat.max()) + 1
    d = dense.shape[0]
    sums = torch.zeros(s, d).index_add_(0, flat, dense.reshape(d, -1).t())
    means = F.normalize(sums / torch.bincount(flat, minlength=s).clamp_min(1).unsqueeze(1), dim=-1)  # (S, D)
    text = clip.names([n for _, n in rows])  # (P, D)
    sims = means @ text.t()  # (S, P)
    per_class = torch.full((s, len(classes)), -torch.inf)
    for j, (k, _) in enumerate(rows):
        per_class[:, k] = torch.maximum(per_class[:, k], sims[:, j])
    return per_class.argmax(1)[labels.long()], [c[0] for c in classes]
