"""Resources several methods declare (not a method module: discovery skips names with "_")."""

from __future__ import annotations

from typing import Any

from ..settings import Resource

__all__ = ["CAPTIONER", "CLIP", "caption_image", "naming_pass_prompt", "segment_names"]


def _load_captioner(value: str, device: Any, dtype: Any) -> Any:
    from ..labeling.captioner import load_captioner

    return load_captioner(value, device, dtype)


#: An optional captioner ``captioner(image, prefix) -> caption`` for images without a caption
#: (a string loads BLIP, `diffuseg.labeling.captioner`): DiffSegmenter continues each class
#: prompt with it, DiffSeg names its segments from its nouns.
CAPTIONER = Resource(
    "captioner",
    "an image captioner for images without a caption (a BLIP captioning model: folder or hub id)",
    load=_load_captioner,
    required=False,
)


def _load_clip(value: str, device: Any, dtype: Any) -> Any:
    from ..labeling.clip import load_clip

    return load_clip(value, device)


#: An optional CLIP model (`diffuseg.labeling.clip.ClipScorer`): DiffSeg and DiffCut name their
#: segments with its dense features (``label="clip"``); the clip filters use it too.
CLIP = Resource(
    "clip",
    "a CLIP model (folder or hub id) for --label clip and --filter clip / caption-clip",
    load=_load_clip,
    required=False,
)


def caption_image(resources: Any, query: Any) -> str | None:
    """The query's caption, else the ``captioner`` resource's unconditional caption of its
    image, else None."""
    if query.caption:
        return query.caption
    captioner = (resources or {}).get(CAPTIONER.name)
    if captioner is None or query.image is None:
        return None
    from ..imageio import as_pil

    return captioner(as_pil(query.image), "")


def naming_pass_prompt(config: Any, query: Any, backbone: Any, resources: Any) -> str | None:
    """The prompt of a pass that names segments (`diffuseg.labeling.naming.naming_prompt`) for a
    config with ``label``, ``label_template``: None when the segments stay unnamed."""
    from ..labeling.naming import naming_prompt

    if config.label == "none" or backbone is None:
        return None
    caption = caption_image(resources, query) if config.label == "caption" else None
    return naming_prompt(backbone.prompt_tokenizer, config.label_template, config.label, query, caption)


def segment_names(config: Any, labels: Any, features: Any, query: Any, resources: Any) -> tuple[Any, list[str]] | None:
    """Name the segment ids `labels` (H, W) as the config's ``label`` / ``voting`` say: class
    indices (H, W) and their names, or None (unnamed).

    Raises:
        ValueError: ``label="clip"`` without the ``clip`` resource or an image in `features`;
            ``label="caption"`` without a caption.
    """
    from ..labeling.naming import clip_named_labels, named_labels, naming_classes

    if config.label == "none" or query is None:
        return None
    classes = naming_classes(config.label, query, features)
    if config.label != "clip":
        return named_labels(labels, features, classes, config.voting)
    clip = (resources or {}).get(CLIP.name)
    if clip is None:
        raise ValueError(
            "`label` 'clip' names segments with a CLIP model: give the resource `clip` (CLI: --clip PATH or a "
            "cached hub id such as openai/clip-vit-large-patch14)."
        )
    if features.images is None:
        raise ValueError("these features carry no image; naming segments with CLIP needs it.")
    return clip_named_labels(labels, features.images[0].float().cpu(), classes, clip)
