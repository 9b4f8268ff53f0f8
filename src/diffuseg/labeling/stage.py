"""The labelling stage's models and its class filter, from plain arguments.

The CLIP model and the captioner given by path or hub id are loaded once, on one device, and
shared: the class filter takes them, and so do the methods that declare them as resources
(DiffSegmenter's captioner, DiffSeg / DiffCut naming segments with CLIP). The CLI, the batch
engine's workers and the eval runner all set the stage up through these two functions.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["LABEL_MODELS", "load_label_models", "build_filter"]

#: The resources of the labelling stage, loaded by `load_label_models`.
LABEL_MODELS = ("captioner", "clip")


def load_label_models(resources: dict[str, Any], device: Any) -> None:
    """Load the labelling models given by path or hub id in `resources` (`LABEL_MODELS`), in
    place, once, on `device`; loaded objects are left as they are.

    Args:
        resources: resource name -> path / hub id string or loaded object (changed in place).
        device: torch device of the CLIP model and the captioner.

    Raises:
        ValueError: naming `device`; OSError / ValueError naming `clip` or `captioner` for a
            model that cannot be loaded.
    """
    todo = [name for name in LABEL_MODELS if isinstance(resources.get(name), str)]
    if not todo:
        return
    from ..devices import check_device

    check_device(device)
    for name in todo:
        if name == "captioner":
            from .captioner import load_captioner

            resources[name] = load_captioner(resources[name], device)
        else:
            from .clip import load_clip

            resources[name] = load_clip(resources[name], device)


def build_filter(
    name: str | None, resources: dict[str, Any], declared: Collection[str] = (), *, has_caption: bool = True
) -> Any:
    """The class filter called `name` (`diffuseg.labeling.filters.FILTERS`), or None.

    It takes the CLIP model and the captioner from `resources` (loaded by `load_label_models`);
    for the CLIP filters, those the method does not declare are removed from `resources` (they
    were the filter's alone).

    Args:
        name: the filter's name, or None.
        resources: the resources, changed in place.
        declared: the names of the resources the method declares.
        has_caption: whether the queries carry a caption (False: ``caption-clip`` needs a
            captioner).

    Raises:
        ValueError: naming `class_filter`, `clip`, `caption`, `captioner`, for what the filter lacks.
    """
    from .filters import make_filter

    clip, captioner = resources.get("clip"), resources.get("captioner")
    if name in ("clip", "caption-clip"):
        for extra in LABEL_MODELS:
            if extra in resources and extra not in declared:
                del resources[extra]
    if name is None or name == "diffusion":
        return make_filter(name)
    if clip is None:
        raise ValueError(f"`class_filter={name}` needs `clip`: a CLIP model folder or a cached hub id.")
    if name == "caption-clip" and captioner is None and not has_caption:
        raise ValueError(f"`class_filter={name}` needs a caption: `caption` TEXT or `captioner` PATH.")
    return make_filter(name, clip=clip, captioner=captioner)
