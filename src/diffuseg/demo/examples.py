"""The demo's bundled examples: by name only, so a request never names a file to open.

* the images in the repository's ``examples/`` folder (a clone has them; an installed package
  may not), and
* a few held-out synthetic scenes (`diffuseg.synthetic.SyntheticScenes`, "test" split),
  rendered on demand, with the classes present in each as its suggested class list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["Example", "bundled_examples", "EXAMPLES_DIR"]

#: The repository's example images (absent from an installed wheel).
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Synthetic scenes offered (indices into the "test" split).
_SCENES = (0, 1, 2)


@dataclass(frozen=True)
class Example:
    """One example image.

    Attributes:
        name: what the examples menu shows (unique).
        classes: a suggested class list for open-vocabulary methods ("" = none).
    """

    name: str
    classes: str = ""
    _path: Path | None = None
    _scene: int | None = None

    def image(self) -> Image.Image:
        """The example as RGB."""
        if self._path is not None:
            from ..imageio import load_image

            return load_image(self._path)
        from ..synthetic import SyntheticScenes

        return SyntheticScenes("test", num_scenes=max(_SCENES) + 1)[self._scene].image


def bundled_examples() -> dict[str, Example]:
    """Name -> `Example`: the synthetic scenes first, then the repository's example files."""
    from ..synthetic import SyntheticScenes

    scenes = SyntheticScenes("test", num_scenes=max(_SCENES) + 1)
    out: dict[str, Example] = {}
    for i in _SCENES:
        present = scenes[i].meta["classes_present"]
        out[f"synthetic scene {i}"] = Example(f"synthetic scene {i}", ", ".join(present), _scene=i)
    if EXAMPLES_DIR.is_dir():
        for path in sorted(EXAMPLES_DIR.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES and path.name not in out:
                out[path.name] = Example(path.name, _path=path)
    return out
