"""The synthetic scenes as a `SegmentationDataset` (same interface as the eval datasets).

Scene ``i`` of split ``s`` is rendered from
``np.random.SeedSequence(seed, spawn_key=(code(s), i))``, so splits never share a scene
seed: the model is trained on ``split="train"`` and measured on ``split="val"`` (the
proving-ground benchmark) or ``split="test"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from PIL import Image

from diffuseg.synthetic.scenes import CLASS_NAMES, Scene, SceneConfig, render_scene
from diffuseg.types import Sample

__all__ = ["SPLITS", "SyntheticScenes", "scene_rng"]

logger = logging.getLogger(__name__)

#: Split name -> spawn-key code. Distinct codes give disjoint seed streams.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator that renders scene `index` of `split`.

    Raises:
        ValueError: unknown split, or a negative index / seed.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {tuple(SPLITS)}, got {split!r}.")
    if index < 0:
        raise ValueError(f"`index` must be >= 0, got {index}.")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}.")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS[split], index)))


class SyntheticScenes:
    """Deterministic synthetic scenes with exact labels and captions.

    Args:
        split: "train", "val" (held out; the proving-ground benchmark) or "test".
        num_scenes: dataset length, in [1, 10_000_000].
        config: scene distribution (`SceneConfig`); its `size` is the image side.
        seed: base seed, >= 0.

    Each `Sample` has an RGB image (size x size), an int64 label map with ids into
    `class_names` (no ignore pixels), and ``meta = {"caption", "objects", "backgrounds",
    "classes_present"}``.
    """

    def __init__(
        self,
        split: str = "val",
        num_scenes: int = 200,
        config: SceneConfig | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {tuple(SPLITS)}, got {split!r}.")
        if not (1 <= num_scenes <= 10_000_000):
            raise ValueError(f"`num_scenes` must be in [1, 10000000], got {num_scenes}.")
        if seed < 0:
            raise ValueError(f"`seed` must be >= 0, got {seed}.")
        self.split = split
        self.num_scenes = num_scenes
        self.config = config or SceneConfig()
        self.seed = seed
        self.name = f"synthetic-{split}"
        self.class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, index: int) -> Scene:
        """Render scene `index` (numpy arrays, caption and object list)."""
        if not (-self.num_scenes <= index < self.num_scenes):
            raise IndexError(f"index {index} out of range for {self.num_scenes} scenes")
        index %= self.num_scenes
        return render_scene(self.config, scene_rng(self.split, index, self.seed))

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        index %= self.num_scenes
        present = sorted(set(np.unique(scene.label).tolist()))
        return Sample(
            id=f"{self.split}-{index:06d}",
            image=Image.fromarray(scene.image, mode="RGB"),
            label=scene.label,
            meta={
                "caption": scene.caption,
                "objects": [o.name for o in scene.objects],
                "backgrounds": list(scene.backgrounds),
                "classes_present": [self.class_names[i] for i in present],
            },
        )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.num_scenes):
            yield self[i]
