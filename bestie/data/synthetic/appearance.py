"""What the embedded style's objects, clutter and background look like, and the colours of every style.

Class c is the shape ``CLASS_SHAPES[c]`` filled with the texture ``CLASS_TEXTURES[c]`` in a
family of hues around its own (:func:`class_hues`); clutter takes the distractor shapes and
textures and any hue. Every random choice draws from the generator it is given.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from functools import cache

import numpy as np

__all__ = [
    "CLASS_NAMES", "CLASS_SHAPES", "DISTRACTOR_SHAPES", "CLASS_TEXTURES", "DISTRACTOR_TEXTURES",
    "EXTENT", "ANY_HUE", "ShapeFn", "TextureFn", "rotate", "unit_area", "waves", "random_colour",
    "class_hues", "two_tones", "embedded_background",
]

CLASS_NAMES = ("disc", "box", "triangle", "star", "ring", "cross")
# Every shape, of every style, lies within this many radii of its centre (the box's corners: sqrt 2).
EXTENT = 1.45

# A shape is a predicate on normalised, rotated coordinates (u, v): [h, w] -> bool [h, w].
ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# -- geometry --------------------------------------------------------------------------
def rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dy, dx) expressed along axes turned by ``angle``: (u, v), broadcast."""
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return dx * cos + dy * sin, dy * cos - dx * sin


# -- shapes ----------------------------------------------------------------------------
def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1: inside all three edges, each at distance 1/2.
    normals = np.deg2rad([90.0, 210.0, 330.0])
    return np.stack([u * math.cos(a) + v * math.sin(a) for a in normals]).max(0) <= 0.5


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: the radius swings linearly between 0.45 and 1 with the angle.
    phase = (np.arctan2(v, u) * (5 / (2 * math.pi))) % 1.0
    return np.hypot(u, v) <= 0.45 + 0.55 * np.abs(1.0 - 2.0 * phase)


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return (np.maximum(au, av) <= 1.0) & (np.minimum(au, av) <= 0.33)


CLASS_SHAPES: tuple[ShapeFn, ...] = (_disc, _box, _triangle, _star, _ring, _cross)


@cache
def unit_area(shape: ShapeFn) -> float:
    """Area of ``shape`` at radius 1 (aspect jitter preserves it), measured on a fine grid."""
    step = 2 * EXTENT / 512
    axis = np.arange(-EXTENT, EXTENT, step) + step / 2
    return float(shape(axis[None, :], axis[:, None]).sum() * step * step)


def _blob(rng: np.random.Generator) -> ShapeFn:
    """A lumpy closed outline: the unit circle with random low harmonics."""
    amplitudes = rng.uniform(-0.15, 0.15, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)

    def blob(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        theta = np.arctan2(v, u)
        harmonics = zip((2, 3, 4), amplitudes, phases)
        radius = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in harmonics)
        return np.hypot(u, v) <= radius

    return blob


def _bar(rng: np.random.Generator) -> ShapeFn:
    half_width = rng.uniform(0.06, 0.16)
    return lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= half_width)


def _squiggle(rng: np.random.Generator) -> ShapeFn:
    half_width = rng.uniform(0.06, 0.12)
    amplitude, waves = rng.uniform(0.15, 0.35), rng.uniform(1.0, 2.5)
    phase = rng.uniform(0, 2 * math.pi)
    return lambda u, v: (np.abs(u) <= 1.0) & (
        np.abs(v - amplitude * np.sin(math.pi * waves * u + phase)) <= half_width
    )


DISTRACTOR_SHAPES = (_blob, _bar, _squiggle)


# -- textures: [h, w] pixel offsets along the texture axes -> [h, w] float in [0, 1] ------
def _stripes(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return ((u / period) % 1.0 < 0.5) + np.zeros_like(v)


def _dots(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    fu, fv = u / period, v / period
    fu, fv = fu - np.round(fu), fv - np.round(fv)
    return fu * fu + fv * fv < 0.16  # dot radius 0.4 periods: half the area, like the others


def _checker(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (np.floor(u / period) + np.floor(v / period)) % 2 == 1


def _rings(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (np.hypot(u, v) / period) % 1.0 < 0.5


def _grid(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return ((u / period) % 1.0 < 0.29) | ((v / period) % 1.0 < 0.29)


def _blocks(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Random binary blocks of half a period: a noise texture."""
    table = rng.random((16, 16)) < 0.5
    size = period / 2
    return table[np.floor(u / size).astype(np.int64) % 16, np.floor(v / size).astype(np.int64) % 16]


def _solid(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(np.broadcast_shapes(u.shape, v.shape))


def _ramp(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    span = rng.uniform(20.0, 50.0)
    return np.clip(0.5 + u / span, 0.0, 1.0) + np.zeros_like(v)


def waves(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    bend = 0.6 * np.sin(2 * math.pi * v / (3 * period))
    return 0.5 + 0.5 * np.sin(2 * math.pi * (u / period + bend))


TextureFn = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]
# Class c is CLASS_SHAPES[c] filled with CLASS_TEXTURES[c]; clutter uses the others.
CLASS_TEXTURES: tuple[TextureFn, ...] = (_stripes, _dots, _checker, _rings, _grid, _blocks)
DISTRACTOR_TEXTURES: tuple[TextureFn, ...] = (_solid, _ramp, waves)


# -- colours -----------------------------------------------------------------------------
# A hue family: (centre, spread) on the hue circle [0, 1); spread 1 is every hue.
ANY_HUE = (0.0, 1.0)


def random_colour(rng: np.random.Generator, hues: tuple[float, float] = ANY_HUE) -> np.ndarray:
    centre, spread = hues
    hue = (centre + spread * rng.uniform(-0.5, 0.5)) % 1.0
    saturation, value = rng.uniform(0.25, 0.9), rng.uniform(0.35, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def class_hues(class_index: int, num_classes: int, spread: float) -> tuple[float, float]:
    """The hue family of a class: centres evenly around the circle, ``spread`` wide."""
    return class_index / num_classes, spread


def two_tones(
    rng: np.random.Generator, hues: tuple[float, float] = ANY_HUE
) -> tuple[np.ndarray, np.ndarray]:
    """A colour of the hue family and a darker or lighter tone of it, the texture's second tone."""
    base = random_colour(rng, hues)
    if rng.random() < 0.5:
        return base, base * rng.uniform(0.25, 0.5)
    return base, base + (1.0 - base) * rng.uniform(0.45, 0.75)


# -- background --------------------------------------------------------------------------
def embedded_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A muted two-colour field of smooth noise, a light gradient and a faint pattern."""
    height, width = size
    dy = np.arange(height, dtype=np.float32)[:, None] - height / 2
    dx = np.arange(width, dtype=np.float32)[None, :] - width / 2
    # Smooth noise: a few random plane waves of 40-150 px wavelength.
    field = np.zeros(size, dtype=np.float32)
    for _ in range(4):
        u, _ = rotate(dy, dx, rng.uniform(0, 2 * math.pi))
        field += np.sin(2 * math.pi * u / rng.uniform(40, 150) + rng.uniform(0, 2 * math.pi))
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    grey = np.float32(0.5)
    near, far = (grey + (random_colour(rng) - grey) * rng.uniform(0.3, 0.8) for _ in range(2))
    canvas = near + (far - near) * field[..., None]
    u, _ = rotate(dy, dx, rng.uniform(0, 2 * math.pi))
    canvas *= (1.0 + rng.uniform(-0.4, 0.4) * u / max(size))[..., None]
    # A faint class-free pattern.
    u, v = rotate(dy, dx, rng.uniform(0, 2 * math.pi))
    period = rng.uniform(8, 20)
    pattern = (
        lambda: ((u / period) % 1.0 < 0.15) | ((v / period) % 1.0 < 0.15),
        lambda: ((u / period) % 1.0 < 0.3) + np.zeros_like(v),
        lambda: waves(u, v, period, rng),
    )[rng.integers(3)]()
    canvas += (rng.uniform(0.03, 0.08) * (pattern - 0.5))[..., None]
    return canvas
