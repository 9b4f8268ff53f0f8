"""Resources several methods declare (not a method module: discovery skips names with "_")."""

from __future__ import annotations

from typing import Any

from ..plan import Resource

__all__ = ["CAPTIONER", "CLIP", "caption_image", "clip_resource", "pixels_of"]


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


def clip_resource(resources: Any) -> Any:
    """The loaded ``clip`` resource.

    Raises:
        ValueError: naming the resource, when there is none (``label="clip"`` needs it).
    """
    clip = (resources or {}).get(CLIP.name)
    if clip is None:
        raise ValueError(
            "`label` 'clip' names segments with a CLIP model: give the resource `clip` (CLI: --clip PATH or a "
            "cached hub id such as openai/clip-vit-large-patch14)."
        )
    return clip


def pixels_of(features: Any) -> Any:
    """Image 0 of `features` as the model saw it: (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: when the features carry no image.
    """
    if features.images is None:
        raise ValueError("these features carry no image; naming segments with CLIP needs it.")
    return features.images[0].float().cpu()
