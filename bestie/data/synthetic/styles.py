"""Styles of synthetic data: what the objects, clutter and background look like, and how big.

The scene composition (:mod:`~bestie.data.synthetic.scene`: layout, occlusion, touching
pairs, the void band, the VOC masks) is shared; a style decides only the looks and the
statistics it is given hooks for. ``synthesize.style`` picks one from :data:`STYLES`; a new
style is a subclass overriding what it changes, plus one line in :data:`STYLES` (and its name in
``SynthesizeParams.style``'s choices, which a test keeps equal to the registry's names).

Every hook draws from the generator it is given, in a fixed order: the embedded style's
draws are exactly those the generator made before styles existed, so its data is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bestie.data.synthetic.appearance import (
    CLASS_NAMES,
    CLASS_SHAPES,
    CLASS_TEXTURES,
    DISTRACTOR_SHAPES,
    DISTRACTOR_TEXTURES,
    ShapeFn,
    TextureFn,
    embedded_background,
)
from bestie.data.synthetic.heldout import (
    HELDOUT_CLASS_NAMES,
    HELDOUT_CLASS_SHAPES,
    HELDOUT_CLASS_TEXTURES,
    HELDOUT_DISTRACTOR_SHAPES,
    HELDOUT_DISTRACTOR_TEXTURES,
    heldout_background,
)

__all__ = ["EmbeddedStyle", "HeldoutStyle", "HeldoutLooksStyle", "STYLES"]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


class EmbeddedStyle:
    """The default data, on which the pipeline's defaults were chosen."""

    class_names: tuple[str, ...] = CLASS_NAMES
    class_shapes: tuple[ShapeFn, ...] = CLASS_SHAPES  # class c: shape c filled with texture c
    class_textures: tuple[TextureFn, ...] = CLASS_TEXTURES
    distractor_shapes: tuple[Callable[[np.random.Generator], ShapeFn], ...] = DISTRACTOR_SHAPES
    distractor_textures: tuple[TextureFn, ...] = DISTRACTOR_TEXTURES
    background: Callable[[np.random.Generator, tuple[int, int]], np.ndarray] = staticmethod(embedded_background)
    texture_period: tuple[float, float] = (5.0, 8.0)  # px
    # An instance is kept only if occlusion leaves this share of it visible.
    min_visible_fraction: float = 0.5

    def area_share(self, rng: np.random.Generator) -> float:
        """An instance's area as a share of min(H, W)^2."""
        return _log_uniform(rng, 0.03, 0.10)

    def centre(
        self, rng: np.random.Generator, size: tuple[int, int], placed: Sequence[tuple[float, float, float]]
    ) -> tuple[float, float]:
        """Where to try the next instance, given the (cy, cx, radius) of those already placed.

        The first goes in the middle half of the image, where it always fits, so no image is
        left without instances.
        """
        low, high = (0.25, 0.75) if not placed else (0.0, 1.0)
        return rng.uniform(low, high) * size[0], rng.uniform(low, high) * size[1]


class HeldoutStyle(EmbeddedStyle):
    """Data the defaults are never tuned on (:mod:`~bestie.data.synthetic.heldout`).

    Besides other looks: more small and more large objects, and heavier occlusion (instances
    are dropped near those already placed and may lose up to 70 % of their area).
    """

    class_names = HELDOUT_CLASS_NAMES
    class_shapes = HELDOUT_CLASS_SHAPES
    class_textures = HELDOUT_CLASS_TEXTURES
    distractor_shapes = HELDOUT_DISTRACTOR_SHAPES
    distractor_textures = HELDOUT_DISTRACTOR_TEXTURES
    background = staticmethod(heldout_background)
    texture_period = (9.0, 14.0)
    min_visible_fraction = 0.3

    def area_share(self, rng: np.random.Generator) -> float:
        # Small, medium or large, 2 : 1 : 2.
        bands = ((0.008, 0.025), (0.03, 0.10), (0.12, 0.3))
        return _log_uniform(rng, *bands[rng.choice(3, p=(0.4, 0.2, 0.4))])

    def centre(
        self, rng: np.random.Generator, size: tuple[int, int], placed: Sequence[tuple[float, float, float]]
    ) -> tuple[float, float]:
        if not placed or rng.random() < 0.4:
            return super().centre(rng, size, placed)
        cy, cx, radius = placed[rng.integers(len(placed))]
        dy, dx = rng.normal(0.0, 1.2 * radius, size=2)
        return float(np.clip(cy + dy, 0, size[0])), float(np.clip(cx + dx, 0, size[1]))


class HeldoutLooksStyle(HeldoutStyle):
    """The held-out looks at the embedded style's geometry: its object sizes, placement and
    occlusion. Separates what unseen looks cost from what the held-out style's smaller, larger,
    clustered and more occluded objects cost."""

    min_visible_fraction = EmbeddedStyle.min_visible_fraction
    area_share = EmbeddedStyle.area_share
    centre = EmbeddedStyle.centre


STYLES: dict[str, EmbeddedStyle] = {
    "embedded": EmbeddedStyle(), "heldout": HeldoutStyle(), "heldout_looks": HeldoutLooksStyle(),
}
