"""Synthetic scenes with exact label maps and captions (the proving ground's world).

A scene is one or two "stuff" backgrounds (grass, sand, water, sky) with one to a few
"thing" objects (shapes and simple procedural objects) painted on top. Every region carries a
colour and a texture drawn at random, and object colours overlap the background colours (green
objects on grass, blue objects on water), so colour alone does not separate the classes.

Rendering is pure numpy on a pixel-centre grid: the label map is exact (no anti-aliasing, no
ignore pixels) and a scene is a pure function of ``(config, rng)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from diffuseg.synthetic.textures import (
    BACKGROUND_NAMES,
    COLOURS,
    TEXTURES,
    paint_background,
    paint_object,
)

__all__ = [
    "BACKGROUND_NAMES",
    "CLASS_NAMES",
    "COLOURS",
    "OBJECT_NAMES",
    "TEXTURES",
    "Scene",
    "SceneConfig",
    "render_scene",
]

logger = logging.getLogger(__name__)

#: Object ("thing") classes; shapes plus two procedural objects.
OBJECT_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "house", "tree")
#: All classes, label id = position. Backgrounds first (stuff), then objects (things).
CLASS_NAMES: tuple[str, ...] = BACKGROUND_NAMES + OBJECT_NAMES


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value!r}.")


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the scene distribution.

    Attributes:
        size: image side in pixels, in [32, 1024]. 128 is the dataset default; the toy model is
            trained on 128-pixel scenes downsampled to 64.
        min_objects: fewest objects per scene, in [1, 6].
        max_objects: most objects per scene, in [min_objects, 6]. Three keeps every object at
            least ~8 latent cells wide on the toy model's 16x16 latent.
        min_radius: smallest object radius as a fraction of `size`, in [0.05, 0.4].
        max_radius: largest object radius as a fraction of `size`, in [min_radius, 0.4].
        horizon_probability: chance that the scene is sky above a ground background, in [0, 1].
        max_overlap: allowed overlap between two objects, as a fraction of the sum of their radii
            (0 = disjoint discs, 0.3 = mild occlusion), in [0, 0.9].
        textures: texture names objects may take (subset of `TEXTURES`).
    """

    size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    min_radius: float = 0.12
    max_radius: float = 0.22
    horizon_probability: float = 0.4
    max_overlap: float = 0.15
    textures: tuple[str, ...] = field(default=TEXTURES)

    def __post_init__(self) -> None:
        _check_range("size", self.size, 32, 1024)
        _check_range("min_objects", self.min_objects, 1, 6)
        _check_range("max_objects", self.max_objects, self.min_objects, 6)
        _check_range("min_radius", self.min_radius, 0.05, 0.4)
        _check_range("max_radius", self.max_radius, self.min_radius, 0.4)
        _check_range("horizon_probability", self.horizon_probability, 0.0, 1.0)
        _check_range("max_overlap", self.max_overlap, 0.0, 0.9)
        bad = [t for t in self.textures if t not in TEXTURES]
        if bad or not self.textures:
            raise ValueError(f"`textures` must be a non-empty subset of {TEXTURES}, got {self.textures!r}.")


@dataclass(frozen=True)
class SceneObject:
    """One painted object: class name, colour, texture, centre (x, y) and radius in pixels."""

    name: str
    colour: str
    texture: str
    center: tuple[float, float]
    radius: float


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: uint8 array (H, W, 3), RGB in [0, 255].
        label: int64 array (H, W) of ids into `CLASS_NAMES`.
        caption: e.g. "a striped red circle and a blue star on grass".
        objects: the objects, in painting order (later ones occlude earlier ones).
        backgrounds: one background name, or ("sky", ground) for a horizon scene.
    """

    image: np.ndarray
    label: np.ndarray
    caption: str
    objects: list[SceneObject]
    backgrounds: tuple[str, ...]


# --------------------------------------------------------------------------- shapes


def _polygon_mask(xx: np.ndarray, yy: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test on a pixel grid. `pts` (P, 2) as (x, y)."""
    inside = np.zeros(xx.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        crosses = (y1 > yy) != (y2 > yy)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x2 - x1) * (yy - y1) / (y2 - y1) + x1
        inside ^= crosses & (xx < x_at)
    return inside


def _regular_points(cx: float, cy: float, r: float, n: int, angle: float) -> np.ndarray:
    a = angle + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)  # (n, 2)


def shape_mask(
    name: str,
    xx: np.ndarray,
    yy: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the object's mask (H, W) bool and an optional "secondary part" mask.

    The secondary part (house roof, tree trunk) is painted in a darker shade of the object's
    colour but belongs to the same class.
    """
    up = -np.pi / 2  # image y grows downwards; "up" is angle -90 degrees
    if name == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2, None
    if name == "square":
        h = r * 0.85
        theta = rng.uniform(-0.3, 0.3)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        return (np.abs(u) <= h) & (np.abs(v) <= h), None
    if name == "triangle":
        pts = _regular_points(cx, cy + 0.15 * r, 1.1 * r, 3, up + rng.uniform(-0.2, 0.2))
        return _polygon_mask(xx, yy, pts), None
    if name == "star":
        outer = _regular_points(cx, cy, 1.1 * r, 5, up)
        inner = _regular_points(cx, cy, 0.45 * r, 5, up + np.pi / 5)
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
        return _polygon_mask(xx, yy, pts), None
    if name == "heart":
        # Implicit heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y pointing up.
        x = (xx - cx) / (0.85 * r)
        y = -(yy - cy) / (0.85 * r) + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0, None
    if name == "house":
        body = (np.abs(xx - cx) <= 0.7 * r) & (yy >= cy - 0.15 * r) & (yy <= cy + 0.9 * r)
        roof_pts = np.array([[cx - 0.95 * r, cy - 0.15 * r], [cx + 0.95 * r, cy - 0.15 * r], [cx, cy - r]])
        roof = _polygon_mask(xx, yy, roof_pts) & ~body
        return body | roof, roof
    if name == "tree":
        crown = (xx - cx) ** 2 + (yy - (cy - 0.25 * r)) ** 2 <= (0.72 * r) ** 2
        trunk = (np.abs(xx - cx) <= 0.18 * r) & (yy >= cy) & (yy <= cy + r) & ~crown
        return crown | trunk, trunk
    raise ValueError(f"`name` must be one of {OBJECT_NAMES}, got {name!r}.")


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: SceneObject) -> str:
    words = ([obj.texture] if obj.texture != "plain" else []) + [obj.colour, obj.name]
    return f"{_article(words[0])} {' '.join(words)}"


def make_caption(objects: list[SceneObject], backgrounds: tuple[str, ...]) -> str:
    """Caption listing the objects (left to right) and the background(s)."""
    phrases = [_object_phrase(o) for o in sorted(objects, key=lambda o: o.center[0])]
    things = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if backgrounds == ("sky",):
        where = "in the sky"
    elif len(backgrounds) == 1:
        where = f"on {backgrounds[0]}"
    else:  # ("sky", ground)
        where = f"on {backgrounds[1]} under the sky"
    return f"{things} {where}"


# --------------------------------------------------------------------------- scene


def _place_objects(config: SceneConfig, rng: np.random.Generator, top: float) -> list[tuple[float, float, float]]:
    size = config.size
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        for _attempt in range(50):
            r = rng.uniform(config.min_radius, config.max_radius) * size
            cx = rng.uniform(r, size - r)
            cy = rng.uniform(max(r, top * size), size - r)
            ok = all(np.hypot(cx - x, cy - y) >= (1 - config.max_overlap) * (r + rr) for x, y, rr in placed)
            if ok:
                placed.append((cx, cy, r))
                break
    return placed


def render_scene(config: SceneConfig | None = None, rng: np.random.Generator | int | None = None) -> Scene:
    """Draw one scene.

    Args:
        config: scene distribution; defaults to `SceneConfig()`.
        rng: numpy Generator or seed; the scene is a pure function of (config, rng state).

    Returns:
        A `Scene` with image (size, size, 3) uint8 and label (size, size) int64.
    """
    config = config or SceneConfig()
    rng = np.random.default_rng(rng)
    size = config.size
    coords = np.arange(size, dtype=np.float64) + 0.5
    xx, yy = np.meshgrid(coords, coords)  # (H, W) pixel centres

    # Background(s).
    if rng.uniform() < config.horizon_probability:
        ground = str(rng.choice([b for b in BACKGROUND_NAMES if b != "sky"]))
        backgrounds: tuple[str, ...] = ("sky", ground)
        horizon = rng.uniform(0.3, 0.5) * size
        wobble = 0.03 * size * np.sin(2 * np.pi * (xx / size) * rng.uniform(0.5, 2) + rng.uniform(0, 6.3))
        sky_mask = yy < horizon + wobble
    else:
        backgrounds = (str(rng.choice(BACKGROUND_NAMES)),)
        sky_mask = np.zeros((size, size), dtype=bool)
    image = np.zeros((size, size, 3), dtype=np.float64)
    label = np.zeros((size, size), dtype=np.int64)
    ground_name = backgrounds[-1]
    image[:] = paint_background(ground_name, xx, yy, size, rng)
    label[:] = CLASS_NAMES.index(ground_name)
    if sky_mask.any():
        sky = paint_background("sky", xx, yy, size, rng)
        image[sky_mask] = sky[sky_mask]
        label[sky_mask] = CLASS_NAMES.index("sky")

    # Objects, painted back to front.
    top = 0.25 if len(backgrounds) == 2 else 0.0
    objects: list[SceneObject] = []
    for cx, cy, r in _place_objects(config, rng, top):
        name = str(rng.choice(OBJECT_NAMES))
        colour = str(rng.choice(list(COLOURS)))
        texture = str(rng.choice(config.textures))
        mask, part = shape_mask(name, xx, yy, cx, cy, r, rng)
        if not mask.any():
            continue
        pixels = paint_object(colour, texture, xx, yy, size, rng, part=part)
        image[mask] = pixels[mask]
        label[mask] = CLASS_NAMES.index(name)
        objects.append(SceneObject(name, colour, texture, (float(cx), float(cy)), float(r)))

    # Objects fully hidden by later ones must not be captioned.
    present = set(np.unique(label).tolist())
    objects = [o for o in objects if CLASS_NAMES.index(o.name) in present]
    caption = make_caption(objects, backgrounds)
    image8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return Scene(image=image8, label=label, caption=caption, objects=objects, backgrounds=backgrounds)
