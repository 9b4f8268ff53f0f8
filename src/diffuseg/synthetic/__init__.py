"""The proving ground: synthetic scenes with exact labels and captions, and the toy model.

* `render_scene` / `SceneConfig`: one scene (numpy image, exact label map, caption).
* `SyntheticScenes`: the scenes as a `SegmentationDataset` (train / val / test splits).
* `diffuseg.synthetic.train`, `.export`: training and export of the shipped ``--model toy``
  (imported lazily: they need diffusers and transformers).
"""

from .dataset import SPLITS, SyntheticScenes, scene_rng
from .scenes import BACKGROUND_NAMES, CLASS_NAMES, OBJECT_NAMES, Scene, SceneConfig, render_scene

__all__ = [
    "BACKGROUND_NAMES",
    "CLASS_NAMES",
    "OBJECT_NAMES",
    "SPLITS",
    "Scene",
    "SceneConfig",
    "SyntheticScenes",
    "render_scene",
    "scene_rng",
]
