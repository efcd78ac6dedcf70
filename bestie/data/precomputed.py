"""Readers of precomputed per-image inputs, as the published code's data layout has them.

```
DIR/WSSS_maps/ID.png     semantic pseudo labels of any WSSS method: a palette (or greyscale)
                         PNG of the image's size, 0 background, c+1 class c, 255 unsure
DIR/Peak_points/ID.txt   peak points: "x y class_index score" a line (score optional: 1.0),
                         x the column, y the row, in image pixels; an empty file: no peaks
DIR/Center_points/ID.txt point labels, the same line format (read by bestie.data.sources.voc)
```

The ``wsss`` and ``peaks`` stages read these in place of computing them (``wsss.source`` /
``peaks.source: read``). Every fault raises :class:`BestieError` naming the file (and line).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from bestie.data.png import read_label_png
from bestie.errors import BestieError
from bestie.structures import IGNORE

__all__ = ["input_dir", "read_point_file", "read_label_map"]

POINT_LINE = "x y class_index score"


def input_dir(path: str, data_root: str | os.PathLike, what: str) -> Path:
    """``path`` itself if absolute, else under ``data_root``; it must be a folder."""
    folder = Path(path) if Path(path).is_absolute() else Path(data_root) / path
    if not folder.is_dir():
        raise BestieError(f"{folder}: {what} folder not found")
    return folder


def read_point_file(
    path: str | os.PathLike, num_classes: int, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """A points file: ``x y class_index [score]`` a line, blank lines skipped.

    Args:
        num_classes: class indices must lie in ``0 .. num_classes - 1``.
        image_size: ``(height, width)``; when given, every point must lie inside the image
            (``0 <= x < width``, ``0 <= y < height``).
    Returns:
        ``[K, 4]`` float32 rows of (x, y, class, score); score 1.0 where the line has none.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: points file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) not in (3, 4):
                raise ValueError
            x, y, klass, score = (float(v) for v in (*fields, "1.0")[:4])
            if not np.isfinite([x, y, klass, score]).all() or klass != int(klass):
                raise ValueError
        except ValueError:
            raise BestieError(f"{path}:{number}: expected '{POINT_LINE}', got {line.strip()!r}") from None
        if not 0 <= klass < num_classes:
            raise BestieError(f"{path}:{number}: class index {int(klass)} out of range 0..{num_classes - 1}")
        if image_size is not None and not (0 <= x < image_size[1] and 0 <= y < image_size[0]):
            raise BestieError(
                f"{path}:{number}: point ({x:g}, {y:g}) outside the {image_size[1]}x{image_size[0]} image"
            )
        rows.append((x, y, klass, score))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def read_label_map(path: str | os.PathLike, num_classes: int, image_size: tuple[int, int]) -> np.ndarray:
    """A semantic label PNG: ``[H, W]`` uint8 of 0 (background), c+1 (class c) or 255 (unsure).

    Args:
        image_size: ``(height, width)`` the map must have.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: label map not found")
    try:
        labels = read_label_png(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BestieError(f"{path}: unreadable label map ({err})") from None
    if labels.shape != tuple(image_size):
        raise BestieError(
            f"{path}: map is {labels.shape[1]}x{labels.shape[0]} but its image is {image_size[1]}x{image_size[0]}"
        )
    values = np.unique(labels)
    bad = values[(values > num_classes) & (values != IGNORE)]
    if bad.size:
        raise BestieError(f"{path}: value {bad[0]} is no class (0 background, 1..{num_classes}, 255 unsure)")
    return labels
