"""What the held-out style's objects, clutter and background look like.

Drawn to share nothing with the embedded style but the colour model: other shape families
(a lobed Fourier contour, a crescent, a thin needle, an eight-spiked burst, a horseshoe, a
dumbbell), other textures (hatching, zigzags, nested squares, speckle, thin lines, smooth
value noise) at coarser periods, random Fourier-contour blobs, arcs and tiles as clutter, and a
smooth gradient background strewn with specks and hairlines instead of plane-wave noise.
Every shape lies within :data:`~bestie.data.synthetic.appearance.EXTENT` radii of its centre.
"""

from __future__ import annotations

import math

import numpy as np

from bestie.data.synthetic.appearance import ShapeFn, TextureFn, random_colour, rotate, waves

__all__ = [
    "HELDOUT_CLASS_NAMES", "HELDOUT_CLASS_SHAPES", "HELDOUT_CLASS_TEXTURES",
    "HELDOUT_DISTRACTOR_SHAPES", "HELDOUT_DISTRACTOR_TEXTURES", "heldout_background",
]

HELDOUT_CLASS_NAMES = ("lobe", "crescent", "needle", "burst", "horseshoe", "dumbbell")


# -- class shapes: (u, v) in radii -> bool ------------------------------------------------
def _lobe(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A fixed Fourier contour: three lobes and a lopsided bulge.
    theta = np.arctan2(v, u)
    return np.hypot(u, v) <= 1.0 + 0.3 * np.cos(3 * theta) + 0.12 * np.cos(theta + 1.0)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)


def _needle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u / 1.4) ** 2 + (v / 0.2) ** 2 <= 1.0


def _burst(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Eight thin spikes: the radius falls steeply from 1.2 at a tip to 0.35 between tips.
    phase = (np.arctan2(v, u) * (8 / (2 * math.pi))) % 1.0
    return np.hypot(u, v) <= 0.35 + 0.85 * np.abs(1.0 - 2.0 * phase) ** 3


def _horseshoe(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.6**2) & ~((u > 0.0) & (np.abs(v) < 0.45))


def _dumbbell(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bells = np.minimum((u - 0.8) ** 2, (u + 0.8) ** 2) + v * v <= 0.55**2
    return bells | ((np.abs(u) <= 0.8) & (np.abs(v) <= 0.18))


HELDOUT_CLASS_SHAPES: tuple[ShapeFn, ...] = (_lobe, _crescent, _needle, _burst, _horseshoe, _dumbbell)


# -- clutter shapes: rng -> shape ---------------------------------------------------------
def _fourier_blob(rng: np.random.Generator) -> ShapeFn:
    """A random closed contour with harmonics 2..6, lumpier than the embedded clutter's."""
    orders = np.arange(2, 7)
    amplitudes = rng.dirichlet(np.ones(len(orders))) * rng.uniform(0.2, 0.45)  # radius stays in [0.55, 1.45]
    phases = rng.uniform(0, 2 * math.pi, size=len(orders))

    def blob(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        theta = np.arctan2(v, u)[..., None]
        radius = 1.0 + (amplitudes * np.cos(orders * theta + phases)).sum(-1)
        return np.hypot(u, v) <= radius

    return blob


def _arc(rng: np.random.Generator) -> ShapeFn:
    inner, span = rng.uniform(0.75, 0.9), rng.uniform(0.6, 1.6) * math.pi
    return lambda u, v: (
        (u * u + v * v <= 1.0) & (u * u + v * v >= inner * inner)
        & ((np.arctan2(v, u) + math.pi) <= span)
    )


def _tile(rng: np.random.Generator) -> ShapeFn:
    half_height = rng.uniform(0.3, 1.0)
    return lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= half_height)


HELDOUT_DISTRACTOR_SHAPES = (_fourier_blob, _arc, _tile)


# -- textures: [h, w] pixel offsets along the texture axes -> [h, w] float in [0, 1] ------
def _triangle_wave(x: np.ndarray) -> np.ndarray:
    return np.abs(2.0 * (x % 1.0) - 1.0)


def _hatch(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (((u + v) / period) % 1.0 < 0.2) | (((u - v) / period) % 1.0 < 0.2)


def _zigzag(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return ((u / period + 0.6 * _triangle_wave(v / period)) % 1.0) < 0.5


def _squares(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (np.maximum(np.abs(u), np.abs(v)) / period) % 1.0 < 0.5


def _speckle(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Sparse random cells a third of a period wide."""
    table = rng.random((32, 32)) < 0.25
    size = period / 3
    return table[np.floor(u / size).astype(np.int64) % 32, np.floor(v / size).astype(np.int64) % 32]


def _hairlines(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return ((u / period) % 1.0 < 0.12) + np.zeros_like(v)


def _value_noise(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Random values on a lattice one period apart, interpolated bilinearly: smooth noise."""
    table = rng.random((16, 16))
    fu, fv = u / period, v / period
    iu, iv = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
    tu, tv = fu - iu, fv - iv

    def at(du: int, dv: int) -> np.ndarray:
        return table[(iu + du) % 16, (iv + dv) % 16]

    top = at(0, 0) + (at(1, 0) - at(0, 0)) * tu
    bottom = at(0, 1) + (at(1, 1) - at(0, 1)) * tu
    return top + (bottom - top) * tv


def _plaid(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return 0.5 * (_triangle_wave(u / period) + _triangle_wave(v / (2 * period)))


HELDOUT_CLASS_TEXTURES: tuple[TextureFn, ...] = (_hatch, _zigzag, _squares, _speckle, _hairlines, _value_noise)
HELDOUT_DISTRACTOR_TEXTURES: tuple[TextureFn, ...] = (_plaid, waves, _value_noise)


# -- background ----------------------------------------------------------------------------
def heldout_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth two-colour gradient with a vignette, strewn with specks and hairlines."""
    height, width = size
    dy = np.arange(height, dtype=np.float32)[:, None] - height / 2
    dx = np.arange(width, dtype=np.float32)[None, :] - width / 2
    u, _ = rotate(dy, dx, rng.uniform(0, 2 * math.pi))
    ramp = np.clip(0.5 + u / max(size), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    start, end = random_colour(rng), random_colour(rng)
    canvas = start + (end - start) * ramp[..., None]
    radius = np.hypot(dy, dx) / (0.75 * max(size))
    canvas *= (1.0 - rng.uniform(0.1, 0.35) * radius * radius)[..., None]
    # Specks: 2-4 px cells scattered over the image, each a tint of one speck colour.
    cell = int(rng.integers(2, 5))
    cells = rng.random((height // cell + 1, width // cell + 1)) < rng.uniform(0.03, 0.1)
    specks = np.repeat(np.repeat(cells, cell, 0), cell, 1)[:height, :width]
    canvas[specks] += (random_colour(rng) - canvas[specks]) * np.float32(rng.uniform(0.3, 0.6))
    # Hairlines: a few 1 px straight lines across the image.
    for _ in range(int(rng.integers(2, 7))):
        u, _ = rotate(dy, dx, rng.uniform(0, 2 * math.pi))
        line = np.abs(u - rng.uniform(-0.5, 0.5) * max(size)) < 0.6
        canvas[line] += (random_colour(rng) - canvas[line]) * np.float32(rng.uniform(0.2, 0.5))
    return canvas
