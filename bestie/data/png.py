"""Label PNGs in the PASCAL VOC style: one uint8 index a pixel, saved with the VOC palette."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["voc_palette", "write_label_png", "read_label_png"]


def voc_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map, flattened to [r0, g0, b0, r1, ...].

    Index i gets its colour from the bits of i spread over the three channels, so
    0 is black, 1 dark red, ..., 255 (void) cream, exactly as VOC's own PNGs.
    """
    code = np.arange(256)
    rgb = np.zeros((256, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[:, channel] |= ((code >> channel) & 1) << shift
        code = code >> 3
    return rgb.astype(np.uint8).reshape(-1).tolist()


_PALETTE = voc_palette()


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Save an [H, W] uint8 label map as a palette PNG (lossless, VOC colours)."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    image = Image.fromarray(labels, mode="P")
    image.putpalette(_PALETTE)
    image.save(path, optimize=False)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a palette (or greyscale) label PNG as its [H, W] uint8 indices."""
    with Image.open(Path(path)) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: label PNG must be palette or greyscale, got mode {image.mode}")
        return np.asarray(image, dtype=np.uint8).copy()
