"""Colours, textures and backgrounds for the synthetic scenes.

All painters return float64 RGB arrays (H, W, 3) in [0, 1] for the whole canvas; the caller
masks them. Randomness comes only from the `np.random.Generator` passed in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKGROUND_NAMES", "COLOURS", "TEXTURES", "paint_background", "paint_object"]

#: Named object colours (RGB in [0, 1]). Green, blue, yellow and white deliberately collide with
#: grass, water, sand and clouds so that colour alone cannot separate objects from backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.85, 0.20),
    "green": (0.20, 0.65, 0.20),
    "blue": (0.15, 0.35, 0.85),
    "purple": (0.55, 0.20, 0.70),
    "white": (0.93, 0.93, 0.93),
    "black": (0.10, 0.10, 0.12),
}
#: Object textures; "plain" is omitted from captions.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
#: Background ("stuff") classes.
BACKGROUND_NAMES: tuple[str, ...] = ("grass", "sand", "water", "sky")


def _jitter(rgb: tuple[float, float, float] | np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Per-scene colour variation: brightness scale and per-channel shift."""
    base = np.asarray(rgb, dtype=np.float64)
    scale = rng.uniform(1 - amount, 1 + amount)
    shift = rng.uniform(-amount / 2, amount / 2, size=3)
    return np.clip(base * scale + shift, 0.0, 1.0)


def _contrast(rgb: np.ndarray) -> np.ndarray:
    """A second colour for patterns: darker for light colours, lighter for dark ones."""
    lum = float(rgb @ np.array([0.299, 0.587, 0.114]))
    return np.clip(rgb * 0.45, 0, 1) if lum > 0.45 else np.clip(rgb * 0.5 + 0.5, 0, 1)


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise (H, W) in [0, 1]: a random `cells` x `cells` grid, bilinearly upsampled."""
    grid = rng.uniform(0, 1, size=(cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False) + cells / (2 * size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    # Bilinear interpolation along y then x; (H, W).
    a = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    b = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return a * (1 - f)[:, None] + b * f[:, None]


def paint_object(
    colour: str,
    texture: str,
    xx: np.ndarray,
    yy: np.ndarray,
    size: int,
    rng: np.random.Generator,
    part: np.ndarray | None = None,
) -> np.ndarray:
    """Paint a textured colour over the canvas.

    Args:
        colour: key of `COLOURS`.
        texture: one of `TEXTURES`.
        xx, yy: float pixel-centre coordinates (H, W).
        size: canvas side in pixels (sets the pattern period).
        rng: randomness (colour jitter, pattern phase and angle).
        part: optional bool mask (H, W) of a secondary part painted in a darker shade.

    Returns:
        float64 (H, W, 3) in [0, 1].
    """
    if colour not in COLOURS:
        raise ValueError(f"`colour` must be one of {tuple(COLOURS)}, got {colour!r}.")
    if texture not in TEXTURES:
        raise ValueError(f"`texture` must be one of {TEXTURES}, got {texture!r}.")
    base = _jitter(COLOURS[colour], rng, 0.12)
    other = _contrast(base)
    period = size * rng.uniform(0.07, 0.10)
    if texture == "plain":
        pattern = np.zeros(xx.shape, dtype=bool)
    elif texture == "striped":
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)
        pattern = (u % period) < period / 2
    elif texture == "dotted":
        ox, oy = rng.uniform(0, period, size=2)
        dx = (xx + ox) % period - period / 2
        dy = (yy + oy) % period - period / 2
        pattern = dx**2 + dy**2 <= (0.28 * period) ** 2
    else:  # checkered
        ox, oy = rng.uniform(0, 2 * period, size=2)
        pattern = ((np.floor((xx + ox) / period) + np.floor((yy + oy) / period)) % 2) == 0
    out = np.where(pattern[..., None], other, base)
    if part is not None:
        out = np.where(part[..., None], out * 0.6, out)
    # Mild shading so flat regions are not perfectly flat.
    shade = 0.92 + 0.08 * _smooth_noise(size, 3, rng)
    return np.clip(out * shade[..., None], 0, 1)


def paint_background(name: str, xx: np.ndarray, yy: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Paint one "stuff" background over the whole canvas.

    Args:
        name: one of `BACKGROUND_NAMES`.
        xx, yy: float pixel-centre coordinates (H, W).
        size: canvas side in pixels.
        rng: randomness.

    Returns:
        float64 (H, W, 3) in [0, 1].
    """
    if name == "grass":
        base = _jitter((0.30, 0.60, 0.18), rng, 0.15)
        blades = rng.uniform(0, 1, size=(size, size))
        blades = 0.5 * blades + 0.5 * np.roll(blades, 1, axis=0)  # short vertical strokes
        tone = 0.75 + 0.35 * _smooth_noise(size, 4, rng) + 0.25 * (blades - 0.5)
        out = base * tone[..., None]
    elif name == "sand":
        base = _jitter((0.87, 0.76, 0.52), rng, 0.12)
        speckle = rng.uniform(-0.08, 0.08, size=(size, size))
        ripple = 0.05 * np.sin(2 * np.pi * (yy + 0.3 * xx) / (size * rng.uniform(0.06, 0.1)))
        tone = 0.9 + 0.15 * _smooth_noise(size, 3, rng) + speckle + ripple
        out = base * tone[..., None]
    elif name == "water":
        base = _jitter((0.12, 0.40, 0.70), rng, 0.15)
        period = size * rng.uniform(0.08, 0.14)
        waves = np.sin(2 * np.pi * (yy + 0.04 * size * np.sin(2 * np.pi * xx / (3 * period))) / period)
        tone = 0.85 + 0.2 * _smooth_noise(size, 3, rng)
        out = base * tone[..., None] + 0.12 * np.clip(waves, 0, 1)[..., None] ** 3
    elif name == "sky":
        top = _jitter((0.35, 0.60, 0.92), rng, 0.1)
        bottom = np.clip(top * 0.6 + 0.4, 0, 1)
        t = (yy / size)[..., None]
        out = top * (1 - t) + bottom * t
        clouds = np.clip((_smooth_noise(size, 5, rng) - 0.55) * 4, 0, 1)
        out = out * (1 - clouds[..., None]) + 0.97 * clouds[..., None]
    else:
        raise ValueError(f"`name` must be one of {BACKGROUND_NAMES}, got {name!r}.")
    return np.clip(out, 0, 1)
