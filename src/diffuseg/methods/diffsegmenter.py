"""DiffSegmenter: training-free open-vocabulary segmentation from class-token cross-attention.

Wang et al., "Diffusion Model is Secretly a Training-free Open Vocabulary Semantic Segmenter"
(arXiv 2309.02773); reference code VCG-team/DiffSegmenter@b3a8686
(``open_vocabulary/voc10/ptp_stable_voc10.py``, cited as l.N below).

Per image and class: the prompt "a photograph of {class}" (optionally continued by a caption),
the class tokens emphasised x1.21, one UNet call at t = 100 on the noised latent. The class
tokens' cross-attention, averaged over heads and layers per resolution, is upsampled to the
finest attention grid, min-max normalised and weighted per UNet level; the sum is propagated
along the finest self-attention (``A_self @ c``), upsampled to the image, min-max normalised per
class and compared by argmax (against a constant background score when the class list has a
"background" class).

Where this differs from the published code, on purpose:

* **One batched UNet call per image** for all its class prompts, the conditional half only.
  The reference runs one call per class at batch 2 and discards the unconditional half (l.64-76).
* **Token spans by token ids** (`diffuseg.labeling.spans`): every token of every mention of the
  class name, averaged. The reference indexes ``3 + embs_len`` (the last sub-token), which COCO's
  script gets wrong (``[3+n, 5+n]``, l.513) and voc12 hard-codes as 4 after renaming classes to
  one-token synonyms. The "-ing" heuristic (l.497-505, averaging with the next caption word) is
  not reproduced: it depends on a BLIP caption's word order.
* **Emphasis on the embeddings** without Compel: ``e0 + 1.21 (e - e0)`` on every class token
  (`DiffusionBackbone.encode_prompts`), the arithmetic Compel's ``word++`` performs; the reference
  emphasises the last word of the name only.
* **Seeded**: noise and the VAE posterior sample come from the caller's generator (the
  reference draws unseeded noise, l.453).
* **Which text**: on a diffusion transformer the class tokens are read in the first part of
  the text axis by default (SD3: its CLIP tokens; FLUX: T5); `text_encoders` ("t5", or
  ("clip", "t5"), a name's columns in both averaged) reads SD3's T5 tokens, its prompt fitted to
  the T5 part's length (`labeling.spans.prompt_budget`, `text_columns`). The reference has a
  UNet and one CLIP encoder.
* **Synonyms** (``"tv|monitor"``) get one prompt each; a class's score is their maximum.
* **Whole image**: the image keeps its aspect ratio (the reference squashes it to 512 x 512).
* **Fixed background score** (`background_score`, reported with every number) instead of the
  threshold swept on the validation set (``evaluation_voc10.py`` l.136-190);
  ``diffuseg eval --tune-background`` runs that sweep and labels the result as tuned.

The reference's settings are the defaults on every model (on the proving ground's toy model its
native 64 px input scores 0.07 mIoU higher than 128 px, which DiffSeg and DiffCut prefer there).
The toy MM-DiT's one preset reads its T5 part's class columns instead of the CLIP part's; t 100,
every layer and the caption were the best of its tuning grid too (docs/mmdit_presets.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..backbone.features import FeatureRequest, Features
from ..labeling.spans import class_prompt, present_spans, prompt_budget, text_columns, token_spans
from ..labeling.vocabulary import background_index, name_rows
from ..ops.crossattention import diffsegmenter_scores, minmax, span_maps
from ..ops.masks import argmax0, class_scores, mean_score_per_label
from ..plan import Pass, Query
from ..types import Segmentation
from .diffsegmenter_config import INFO, DiffSegmenterConfig
from .spec import MethodSpec

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone

__all__ = ["DiffSegmenterConfig", "PRESETS", "plan", "segment", "class_rows", "SPEC"]


#: Model family -> overrides (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "toy-mmdit": {"text_encoders": ("t5",)},  # docs/mmdit_presets.md: the T5 part's class columns
}


def class_rows(query: Query) -> list[tuple[int, str]]:
    """The prompt rows of a query: one per name of `labeling.vocabulary.name_rows`."""
    return name_rows(query.classes)


def _check_backbone(backbone: Backbone | None) -> Backbone:
    if backbone is None:
        raise ValueError("DiffSegmenter plans its prompts with the backbone's tokenizer; got `backbone=None`.")
    return backbone


def _request(config: DiffSegmenterConfig, backbone: Backbone) -> FeatureRequest:
    """The text maps of `config.layers` (all by default) and the finest level's image maps
    (of the same layers, where they have one there)."""
    layer_map = backbone.layer_map
    finest = layer_map.finest("image")
    if config.layers is None:
        return FeatureRequest(self_attention=finest, cross_attention=True)
    text = layer_map.select("text", config.layers)
    image = tuple(p for p in text if p in finest) or finest
    return FeatureRequest(self_attention=image, cross_attention=text)


def plan(
    config: DiffSegmenterConfig,
    query: Query,
    backbone: Backbone | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Pass:
    """One UNet call per image: one prompt per class name, its tokens emphasised; records the
    cross-attention of every layer and the self-attention of the finest level.

    The prompt of class name c is ``template(c)``, continued by ", " + the query's caption
    (with `use_caption`). Without a query caption, a ``captioner`` resource (when given)
    continues ``template(c)`` itself, conditioned on the image, as the reference's BLIP does.
    """
    rows = class_rows(query)
    if not rows:
        raise ValueError(
            "`classes` must name at least one class other than 'background' for DiffSegmenter "
            f"(got {query.class_names or 'none'}); e.g. classes='cat,sofa,window'."
        )
    backbone = _check_backbone(backbone)
    # the prompts fit the parts read (`text_encoders`); the emphasis weighs the first part's tokens
    writer, budget = prompt_budget(backbone, config.text_encoders)
    caption = query.caption if config.use_caption and query.caption else None
    prompts, weights = [], []
    prompts_in = [class_prompt(writer, config.template, name, caption, budget=budget) for _, name in rows]
    captioner = (resources or {}).get("captioner") if config.use_caption and caption is None else None
    if captioner is not None and query.image is not None:
        prompts_in = _captioned(captioner, query.image, prompts_in, writer, budget)
    tokenizer = backbone.prompt_tokenizer
    spans = token_spans if config.text_encoders is None else present_spans  # T5 may hold a name CLIP cut
    for (_, name), prompt in zip(rows, prompts_in, strict=True):
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
        (positions,) = spans(tokenizer, ids, [name])
        prompts.append(prompt)
        weights.append(tuple((p, config.emphasis) for p in positions) if config.emphasis != 1.0 else ())
    request = _request(config, backbone)
    return Pass.for_query(
        query,
        config.image_size,
        request=request,
        timestep=config.timestep,
        prompts=tuple(prompts),
        token_weights=tuple(weights) if any(weights) else (),
        add_noise=True,
        latent_mode=config.latent_mode,
    )


def _captioned(captioner: Any, image: Any, prefixes: list[str], tokenizer: Any, budget: int) -> list[str]:
    """The captioner's continuation of each prefix for `image` (a caption must start with its
    prefix, as BLIP's conditional captions do; otherwise it is appended after ", "), cut to
    `budget` tokens of `tokenizer`."""
    from ..imageio import as_pil

    pil = as_pil(image)
    many = getattr(captioner, "caption_many", None)
    texts = many(pil, prefixes) if many is not None else [captioner(pil, p) for p in prefixes]
    out = []
    for prefix, text in zip(prefixes, texts, strict=True):
        text = str(text).strip()
        if not text.lower().startswith(prefix.lower()):
            text = f"{prefix}, {text}"
        ids = tokenizer(text, add_special_tokens=False).input_ids
        out.append(tokenizer.decode(ids[:budget]) if len(ids) > budget else text)  # the prefix fits
    return out


def _row_scores(features: Features, row: int, name: str, config: DiffSegmenterConfig) -> torch.Tensor:
    """The refined score map (h, w) of one prompt row at the finest attention grid."""
    one = features.rows(row, row + 1)
    # the name's attention per level and the self-attention depend on no setting: kept with the
    # features, so re-segmenting from cached features with other settings skips them
    encoders = config.text_encoders
    key = ("diffsegmenter", "maps", name, encoders)
    maps, fine, self_attention = one.derive(key, lambda: _row_maps(one, name, encoders))
    levels = list(maps)  # coarsest first
    if len(levels) > len(config.level_weights):
        raise ValueError(
            f"`level_weights` has {len(config.level_weights)} weights but this model has {len(levels)} "
            "cross-attention levels; give one weight per level, coarsest first."
        )
    weights = dict(zip(levels, config.level_weights, strict=False))
    return diffsegmenter_scores(maps, self_attention, weights, config.refine_iterations, grid=fine)[0]


def _row_maps(
    one: Features, name: str, encoders: tuple[str, ...] | None = None
) -> tuple[dict[tuple[int, int], torch.Tensor], tuple[int, int], torch.Tensor]:
    """One prompt row's `name` attention per cross-attention grid (coarsest first): the mean of
    the columns `text_columns` finds in the parts `encoders` chooses; the finest self-attention
    grid and its (N, N) map (only the finest is recorded)."""
    (positions,) = text_columns(one, 0, [name], encoders)
    cross = one.by_resolution("cross")  # (h, w) -> (1, N, T), finest first
    maps = {hw: span_maps(cross[hw][0], hw, [positions]) for hw in sorted(cross, key=lambda hw: hw[0] * hw[1])}
    selfs = one.by_resolution("self")
    fine = next(iter(selfs))
    return maps, fine, selfs[fine][0]


def score_maps(
    features: Features,
    config: DiffSegmenterConfig = DiffSegmenterConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The class scores `segment` labels by: (K, H, W) float32 at the model input size, each
    name's refined map min-max normalised to [0, 1], a class the best of its names, the
    background class (if any) the constant `config.background_score`.

    Raises:
        ValueError: if the features do not hold one row per class name, or lack attention.
    """
    if query is None:
        raise ValueError("DiffSegmenter's `segment` needs the `query` its pass was planned for.")
    rows = class_rows(query)
    if features.batch_size != len(rows):
        raise ValueError(f"`features` has {features.batch_size} rows but the query has {len(rows)} class names.")
    if not features.cross_attention or not features.self_attention:
        raise ValueError("`features` holds no cross- or self-attention maps; record them with DiffSegmenter's plan.")
    size = features.image_size
    per_row = torch.stack([_row_scores(features, r, name, config) for r, (_, name) in enumerate(rows)])
    up = F.interpolate(per_row[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    up = minmax(up)  # (P, H, W) in [0, 1]
    bg = background_index(query.classes)
    return class_scores(up, [c for c, _ in rows], len(query.classes), bg, config.background_score)  # synonyms: max


def segment(
    features: Features,
    config: DiffSegmenterConfig = DiffSegmenterConfig(),  # noqa: B008 - frozen
    query: Query | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Segmentation:
    """Label one image with the query's classes.

    Args:
        features: the rows of one image, one per name of `class_rows(query)`, as `plan` records.
        config: hyperparameters.
        query: the classes (and caption) the pass was planned for.
        resources: unused.

    Returns:
        `Segmentation` with int64 labels (H, W) at the model input size: index into
        `query.classes`; `names` = the class names; `scores` (K,) = each class's mean final
        score over its pixels (0 for classes that get none); extras["class_scores"] (K, H, W)
        float32 in [0, 1].

    Raises:
        ValueError: if the features do not hold one row per class name, or lack attention.
    """
    scores = score_maps(features, config, query, resources)
    labels = argmax0(scores)
    class_score = mean_score_per_label(scores, labels)
    return Segmentation(
        labels=labels.cpu(),
        names=list(query.class_names),
        scores=class_score,
        extras={"class_scores": scores.clamp_min(0).cpu()},
    )


def working_bytes(tokens: int) -> int:
    """Peak memory of `segment` beyond the recording: one row's copy of the finest (N, N)
    self-attention while its scores are refined (the rows are processed one at a time)."""
    return 2 * 4 * tokens * tokens


SPEC = MethodSpec.from_info(
    INFO,
    plan=plan,
    segment=segment,
    presets=PRESETS,
    needs_classes=True,
    working_bytes=working_bytes,
    score_maps=score_maps,
)
