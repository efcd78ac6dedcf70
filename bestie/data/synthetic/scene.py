"""One synthetic image and its VOC masks: poses, painting, scene layout, the void band.

:func:`render_image` is a pure function of ``(params, split, index)``: every random draw
comes from one generator seeded with them, in a fixed order. The composition here is shared
by every style; what the style (``params.style``, :data:`~bestie.data.synthetic.styles.STYLES`)
decides is drawn through its hooks.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bestie.config import SynthesizeParams
from bestie.data.synthetic.appearance import (
    ANY_HUE,
    EXTENT,
    ShapeFn,
    TextureFn,
    class_hues,
    rotate,
    two_tones,
    unit_area,
)
from bestie.data.synthetic.styles import STYLES, EmbeddedStyle
from bestie.structures import IGNORE

__all__ = ["SyntheticImage", "render_image", "void_band"]


# An instance is kept only if occlusion leaves this many pixels of it visible (and the
# style's share of its area).
MIN_VISIBLE_PIXELS = 80
# An instance the void band shrinks below this is voided whole (the pipeline ignores
# components smaller than 50 px anyway).
MIN_LABELLED_PIXELS = 50


@dataclass(frozen=True)
class SyntheticImage:
    """One rendered image with its VOC masks."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    class_map: np.ndarray  # [H, W] uint8: 0 background, c+1 class c, 255 void
    object_map: np.ndarray  # [H, W] uint8: 0 background, k instance k (1-based), 255 void
    classes: list[int]  # class index (0-based) of instance k+1


# -- geometry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pose:
    cy: float  # centre, px
    cx: float
    radius: float  # px; the shape's unit length
    aspect: float  # the shape is stretched by it along u and squeezed along v (area kept)
    angle: float  # rad


@dataclass(frozen=True)
class _Footprint:
    """A shape rasterised in its window of the image."""

    window: tuple[slice, slice]
    mask: np.ndarray  # [h, w] bool: the window's pixels the (unoccluded) shape covers
    dy: np.ndarray  # [h, 1] float32: pixel row minus centre row
    dx: np.ndarray  # [1, w] float32


def _rasterise(shape: ShapeFn, pose: _Pose, size: tuple[int, int]) -> _Footprint | None:
    """The pixels of an image of ``size`` (H, W) that ``shape`` at ``pose`` covers."""
    half = _reach(pose) * EXTENT
    y0, y1 = max(math.floor(pose.cy - half), 0), min(math.ceil(pose.cy + half) + 1, size[0])
    x0, x1 = max(math.floor(pose.cx - half), 0), min(math.ceil(pose.cx + half) + 1, size[1])
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(pose.cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(pose.cx)
    u, v = rotate(dy, dx, pose.angle)
    mask = shape(u / (pose.radius * pose.aspect), v * (pose.aspect / pose.radius))
    return _Footprint((slice(y0, y1), slice(x0, x1)), mask, dy, dx)


def _reach(pose: _Pose) -> float:
    """The pose's longest half-axis in px, before the shape's own extent."""
    return pose.radius * max(pose.aspect, 1 / pose.aspect)


def _overlaps(a: _Footprint, b: _Footprint) -> bool:
    (ay, ax), (by, bx) = a.window, b.window
    y0, y1 = max(ay.start, by.start), min(ay.stop, by.stop)
    x0, x1 = max(ax.start, bx.start), min(ax.stop, bx.stop)
    if y0 >= y1 or x0 >= x1:
        return False
    in_a = a.mask[y0 - ay.start : y1 - ay.start, x0 - ax.start : x1 - ax.start]
    in_b = b.mask[y0 - by.start : y1 - by.start, x0 - bx.start : x1 - bx.start]
    return bool((in_a & in_b).any())


# -- painting ----------------------------------------------------------------------------
def _paint(
    canvas: np.ndarray,
    footprint: _Footprint,
    texture: TextureFn,
    rng: np.random.Generator,
    radius: float,
    period_range: tuple[float, float],
    hues: tuple[float, float] = ANY_HUE,
) -> None:
    """Fill ``footprint`` on ``canvas`` [H, W, 3] with a two-tone texture under soft light."""
    tone_a, tone_b = two_tones(rng, hues)
    period = rng.uniform(*period_range)
    u, v = rotate(footprint.dy, footprint.dx, rng.uniform(0, 2 * math.pi))
    mix = texture(u + rng.uniform(0, period), v + rng.uniform(0, period), period, rng)
    light_u, _ = rotate(footprint.dy, footprint.dx, rng.uniform(0, 2 * math.pi))
    shade = 1.0 + rng.uniform(0.0, 0.3) * np.clip(light_u / radius, -1.0, 1.0)
    fill = (tone_a + (tone_b - tone_a) * mix[..., None]) * shade[..., None]
    canvas[footprint.window][footprint.mask] = fill[footprint.mask]


def _paint_distractors(
    rng: np.random.Generator, canvas: np.ndarray, count: int, scale: float, style: EmbeddedStyle
) -> None:
    """Paint ``count`` class-free shapes: clutter that stays background in the masks."""
    size = canvas.shape[:2]
    shapes, textures = style.distractor_shapes, style.distractor_textures
    for _ in range(count):
        shape = shapes[rng.integers(len(shapes))](rng)
        radius = scale * rng.uniform(0.1, 0.22)
        centre = (rng.uniform(0, size[0]), rng.uniform(0, size[1]))
        pose = _Pose(*centre, radius, 1.0, rng.uniform(0, 2 * math.pi))
        footprint = _rasterise(shape, pose, size)
        if footprint is not None:
            texture = textures[rng.integers(len(textures))]
            _paint(canvas, footprint, texture, rng, radius, style.texture_period)


# -- scene layout ------------------------------------------------------------------------
class _Stack:
    """Instances stacked in painting order, and who of them is visible where."""

    def __init__(self, size: tuple[int, int], min_visible_fraction: float) -> None:
        self.min_visible_fraction = min_visible_fraction
        self.owner = np.zeros(size, dtype=np.uint8)  # 0 background, k instance k
        self.footprints: list[_Footprint] = []
        self.poses: list[_Pose] = []
        self.classes: list[int] = []
        self.areas: list[float] = []  # full (unoccluded, untruncated) areas
        self.visible: list[int] = []

    def _min_visible(self, area: np.ndarray | float) -> np.ndarray:
        return np.maximum(self.min_visible_fraction * np.asarray(area), MIN_VISIBLE_PIXELS)

    def push(
        self, footprint: _Footprint | None, pose: _Pose, class_index: int, area: float
    ) -> bool:
        """Put an instance on top unless it, or one it covers, would lose too much."""
        if footprint is None:
            return False
        own = int(footprint.mask.sum())  # the window is clipped to the image
        if own < self._min_visible(area):
            return False
        covered = self.owner[footprint.window][footprint.mask]
        lost = np.bincount(covered, minlength=len(self.visible) + 1)[1:]
        visible = np.asarray(self.visible, dtype=np.int64) - lost
        if (visible < self._min_visible(np.asarray(self.areas))).any():
            return False
        self.owner[footprint.window][footprint.mask] = len(self.visible) + 1
        self.visible = [*visible.tolist(), own]
        self.footprints.append(footprint)
        self.poses.append(pose)
        self.classes.append(class_index)
        self.areas.append(area)
        return True


def _sample_shape_pose(
    rng: np.random.Generator, shape: ShapeFn, scale: float, centre: tuple[float, float], style: EmbeddedStyle
) -> tuple[_Pose, float]:
    """A random size, stretch and turn for ``shape``; returns the pose and the shape's area."""
    area = scale * scale * style.area_share(rng)
    area = max(area, 2.0 * MIN_VISIBLE_PIXELS)  # tiny images: still worth keeping
    radius = math.sqrt(area / unit_area(shape))
    stretch, angle = math.exp(rng.uniform(-0.3, 0.3)), rng.uniform(0, 2 * math.pi)
    return _Pose(*centre, radius, stretch, angle), area


def _push_random(
    rng: np.random.Generator,
    stack: _Stack,
    class_index: int,
    scale: float,
    style: EmbeddedStyle,
    tries: int = 20,
) -> bool:
    """Drop an instance at places the style picks until it fits the stack."""
    shape, size = style.class_shapes[class_index], stack.owner.shape
    placed = [(pose.cy, pose.cx, pose.radius) for pose in stack.poses]
    for _ in range(tries):
        centre = style.centre(rng, size, placed)
        pose, area = _sample_shape_pose(rng, shape, scale, centre, style)
        if stack.push(_rasterise(shape, pose, size), pose, class_index, area):
            return True
    return False


def _touching_pair(
    rng: np.random.Generator,
    size: tuple[int, int],
    class_index: int,
    scale: float,
    style: EmbeddedStyle,
    tries: int = 10,
) -> _Stack | None:
    """Two instances of one class, the second slid in until it meets (or just covers) the first."""
    shape = style.class_shapes[class_index]
    for _ in range(tries):
        centre = (rng.uniform(0.3, 0.7) * size[0], rng.uniform(0.3, 0.7) * size[1])
        pose, area = _sample_shape_pose(rng, shape, scale, centre, style)
        partner, partner_area = _sample_shape_pose(rng, shape, scale, centre, style)
        heading = rng.uniform(0, 2 * math.pi)
        overlap_px = rng.uniform(0.0, 2.5)
        first = _rasterise(shape, pose, size)

        def at(distance: float) -> tuple[_Pose, _Footprint | None]:
            cy = centre[0] + distance * math.sin(heading)
            cx = centre[1] + distance * math.cos(heading)
            moved = _Pose(cy, cx, partner.radius, partner.aspect, partner.angle)
            return moved, _rasterise(shape, moved, size)

        def meets(distance: float) -> bool:
            footprint = at(distance)[1]
            return footprint is not None and _overlaps(first, footprint)

        # Bisect the centre distance between overlapping (near) and apart (far).
        near, far = 0.0, EXTENT * (_reach(pose) + _reach(partner)) + 2
        if not meets(near):  # e.g. a small ring inside a big ring's hole
            continue
        while far - near > 0.5:
            middle = (near + far) / 2
            near, far = (middle, far) if meets(middle) else (near, middle)
        second, footprint = at(max(near - overlap_px, 0.0))
        stack = _Stack(size, style.min_visible_fraction)
        if stack.push(first, pose, class_index, area) and stack.push(
            footprint, second, class_index, partner_area
        ):
            return stack
    return None


def _plan_classes(rng: np.random.Generator, params: SynthesizeParams, pair: bool) -> list[int]:
    """Class of every instance to place, in painting order; a forced pair comes first."""
    count = int(rng.integers(2 if pair else 1, params.max_instances + 1))
    most = min(params.max_classes_per_image, params.num_classes, count - 1 if pair else count)
    chosen = rng.choice(params.num_classes, size=int(rng.integers(1, most + 1)), replace=False)
    head = [int(chosen[0])] * 2 if pair else [int(chosen[0])]
    extra = rng.choice(chosen, size=count - len(head) - (len(chosen) - 1))
    rest = np.concatenate([chosen[1:], extra])
    return head + rng.permutation(rest).tolist()


def _forces_pair(index: int, share: float) -> bool:
    """Whether image ``index`` is one of the evenly spread ``share`` with a touching pair."""
    return math.floor((index + 1) * share + 1e-9) > math.floor(index * share + 1e-9)


# -- masks -------------------------------------------------------------------------------
def void_band(owner: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px (8-connected) of an instance painted later.

    Painting order makes the band one-sided: it lies in the background around each
    instance and in the covered instance along an occlusion border, so every border gets
    exactly ``width`` px and an instance's own visible pixels stay labelled.

    Args:
        owner: [H, W] uint8, 0 background, k instance k in painting order.
    Returns:
        [H, W] bool.
    """
    if width == 0:
        return np.zeros(owner.shape, dtype=bool)
    return ndimage.maximum_filter(owner, size=2 * width + 1, mode="nearest") > owner


def _label_maps(
    owner: np.ndarray, classes: Sequence[int], void_width: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Object and class maps with the void band; instances it shrinks too far become void."""
    objects = owner.copy()
    objects[void_band(owner, void_width)] = IGNORE
    counts = np.bincount(objects.ravel(), minlength=256)[1 : len(classes) + 1]
    kept = np.flatnonzero(counts >= MIN_LABELLED_PIXELS)
    relabel = np.full(256, IGNORE, dtype=np.uint8)
    relabel[0] = 0
    relabel[kept + 1] = np.arange(1, len(kept) + 1)
    objects = relabel[objects]
    kept_classes = [int(classes[k]) for k in kept]
    to_class = np.full(256, IGNORE, dtype=np.uint8)
    to_class[0] = 0
    to_class[1 : len(kept) + 1] = np.asarray(kept_classes, dtype=np.uint8) + 1
    return objects, to_class[objects], kept_classes


# -- images ------------------------------------------------------------------------------
def _split_code(split: str) -> int:
    return zlib.crc32(split.encode())


def render_image(params: SynthesizeParams, split: str, index: int) -> SyntheticImage:
    """Render image ``index`` of ``split``: a pure function of its arguments."""
    style = STYLES[params.style]
    rng = np.random.default_rng([params.seed, _split_code(split), index])
    height, width = rng.integers(params.min_side, params.max_side + 1, size=2).tolist()
    size, scale = (height, width), float(min(height, width))
    canvas = style.background(rng, size)
    _paint_distractors(rng, canvas, int(rng.integers(0, params.distractors + 1)), scale, style)

    pair = params.max_instances >= 2 and _forces_pair(index, params.touching_share)
    plan = _plan_classes(rng, params, pair)
    stack = _touching_pair(rng, size, plan[0], scale, style) if pair else None
    if stack is None:  # no pair asked for, or none fitted: place everything at random
        stack = _Stack(size, style.min_visible_fraction)
    else:
        plan = plan[2:]
    for class_index in plan:
        _push_random(rng, stack, class_index, scale, style)
    for class_index, footprint, pose in zip(stack.classes, stack.footprints, stack.poses):
        hues = class_hues(class_index, params.num_classes, params.hue_spread)
        texture = style.class_textures[class_index]
        _paint(canvas, footprint, texture, rng, pose.radius, style.texture_period, hues)

    # A touch of blur and sensor noise, so edges and flat areas look photographed.
    canvas = ndimage.gaussian_filter(canvas, sigma=(0.5, 0.5, 0.0))
    canvas += rng.normal(0.0, 0.012, size=canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
    object_map, class_map, classes = _label_maps(stack.owner, stack.classes, params.void_width)
    return SyntheticImage(image, class_map, object_map, classes)
