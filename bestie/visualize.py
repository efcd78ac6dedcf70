"""Pictures a person can look at: label maps in VOC colours, class-map and instance overlays,
side-by-side panels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from bestie.data.png import voc_palette

__all__ = ["colorize_labels", "cam_overlay", "overlay_instances", "panels"]

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """[H, W] uint8 label map -> [H, W, 3] uint8 in VOC colours (255 = void is cream)."""
    return _PALETTE[labels]


def cam_overlay(image: np.ndarray, cams: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Tint each pixel toward its strongest class's VOC colour, as strongly as that CAM is high.

    Args:
        image: [H, W, 3] uint8; cams: [K, H, W] float32 in [0, 1]; classes: the K class indices.
    Returns:
        [H, W, 3] uint8: the image in half-bright grey where no CAM is high.
    """
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.5
    if not len(classes):
        return grey.astype(np.uint8)
    strength, winner = cams.max(axis=0), cams.argmax(axis=0)  # [H, W] each
    colour = _PALETTE[np.asarray(classes)[winner] + 1].astype(np.float32)
    alpha = strength[..., None]
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def _instance_colours(count: int) -> np.ndarray:
    """Distinct, stable colours: golden-ratio hue steps at full saturation."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    k = (np.array([5, 3, 1])[None] + hues[:, None] * 6) % 6
    return (255 * (1 - np.clip(np.minimum(k, 4 - k), 0, 1))).astype(np.uint8)


def overlay_instances(
    image: np.ndarray,
    masks: np.ndarray,
    classes: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    scores: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw instances on an image: tinted masks, white borders, "class score" at each mask.

    Args:
        image: [H, W, 3] uint8; masks: [N, H, W] bool; classes: [N]; scores: [N] or None.
    Returns:
        [H, W, 3] uint8.
    """
    out = image.astype(np.float32)
    colours = _instance_colours(len(masks))
    for mask, colour in zip(masks, colours):  # one vectorised blend per instance
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    if len(masks):
        owner = np.where(masks.any(0), masks.argmax(0), -1)
        border = np.zeros(owner.shape, dtype=bool)
        border[:, 1:] |= owner[:, 1:] != owner[:, :-1]
        border[1:, :] |= owner[1:, :] != owner[:-1, :]
        out[border] = 255
    canvas = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        text = class_names[int(classes[i])] + ("" if scores is None else f" {scores[i]:.2f}")
        x, y = int(xs.min()), max(0, int(ys.min()) - 10)
        draw.text((x + 1, y + 1), text, fill=(0, 0, 0))
        draw.text((x, y), text, fill=tuple(int(c) for c in colours[i]))
    return np.asarray(canvas)


def panels(images: list[np.ndarray], titles: list[str] | None = None, gap: int = 4) -> np.ndarray:
    """Place [H, W, 3] images side by side (heights padded to the tallest), with titles on top."""
    title_height = 12 if titles else 0
    height = max(im.shape[0] for im in images) + title_height
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, im in enumerate(images):
        canvas.paste(Image.fromarray(im), (x, title_height))
        if titles:
            draw.text((x + 2, 0), titles[i], fill=(0, 0, 0))
        x += im.shape[1] + gap
    return np.asarray(canvas)
