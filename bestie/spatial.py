"""Primitives on maps that several steps of the method share: the window max filter (peak
points, docs/method.md §1; center peaks, §6-§7) and per-class connected components
(semantic knowledge transfer, §3; self-refinement, §6; inference, §7).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from bestie.structures import IGNORE

__all__ = ["max_filter", "class_components"]

_STRUCTURES = {
    8: np.ones((3, 3), dtype=bool),
    4: ndimage.generate_binary_structure(2, 1),  # the 3x3 cross
}


def _max_filter_1d(x: Tensor, kernel: int, dim: int) -> Tensor:
    length = x.shape[dim]
    radius = kernel // 2
    pad = [0, 0] * (x.dim() - 1 - dim) + [radius, radius]
    window_max = F.pad(x, pad, value=float("-inf"))
    # Window doubling: after the loop window_max[i] = max(padded[i : i + width]).
    width = 1
    while 2 * width <= kernel:
        size = window_max.shape[dim] - width
        window_max = torch.maximum(
            window_max.narrow(dim, 0, size), window_max.narrow(dim, width, size)
        )
        width *= 2
    # Two overlapping windows of `width` cover the `kernel` window exactly.
    return torch.maximum(
        window_max.narrow(dim, 0, length), window_max.narrow(dim, kernel - width, length)
    )


def max_filter(x: Tensor, kernel: int) -> Tensor:
    """Max over the kernel x kernel window centred on each pixel (positions outside ignored).

    Equal to ``F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)`` but separable and by
    window doubling: O(log kernel) per pixel instead of O(kernel^2), two orders of
    magnitude faster on the CPU at kernel 41.

    Args:
        x: [..., H, W] float.
        kernel: odd window width.

    Returns:
        [..., H, W], same dtype.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: must be a positive odd number, got {kernel}")
    if x.dim() < 2:
        raise ValueError(f"x: expected [..., H, W], got shape {tuple(x.shape)}")
    return _max_filter_1d(_max_filter_1d(x, kernel, x.dim() - 1), kernel, x.dim() - 2)


def class_components(
    semantic_map: np.ndarray,
    classes: Iterable[int] | None = None,
    *,
    min_size: int = 1,
    connectivity: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class connected components of a semantic map, numbered jointly.

    Args:
        semantic_map: [H, W] uint8; 0 background, c + 1 class c, 255 ignore.
        classes: the classes to label; pixels of other classes are left out. None: every
            class in the map.
        min_size: components with fewer pixels are dropped.
        connectivity: 8 (the full 3x3 neighbourhood) or 4 (the 3x3 cross).

    Returns:
        component_map: [H, W] int32; 0 = none, k = component k (1-based), numbered by class
            (ascending), then in ``ndimage.label`` order (raster order of each component's
            first pixel).
        component_class: [K] int64; the class of component k at index k - 1.
    """
    semantic_map = np.asarray(semantic_map)
    if semantic_map.ndim != 2 or semantic_map.dtype != np.uint8:
        raise ValueError(
            "semantic_map: expected a uint8 [H, W] array, got "
            f"{semantic_map.dtype} {semantic_map.shape}"
        )
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity: must be 4 or 8, got {connectivity!r}")
    structure = _STRUCTURES[connectivity]
    label_size = np.bincount(semantic_map.ravel(), minlength=256)
    if classes is None:
        classes = np.flatnonzero(label_size[1:IGNORE])
    component_map = np.zeros(semantic_map.shape, dtype=np.int32)
    component_class: list[np.ndarray] = []
    # A class with fewer than min_size pixels cannot hold a component: skip its labelling
    # (noisy predictions scatter a few pixels of many classes).
    candidates = set((np.flatnonzero(label_size >= min_size) - 1).tolist())
    # Each class is labelled inside its bounding box (the same components, numbered alike).
    boxes = ndimage.find_objects(semantic_map)
    next_id = 1
    for cls in sorted({int(c) for c in classes}):
        if cls < 0:
            raise ValueError(f"classes: class indices must be >= 0, got {cls}")
        box = boxes[cls] if cls < len(boxes) else None
        if cls not in candidates or box is None:
            continue
        labels, count = ndimage.label(semantic_map[box] == cls + 1, structure=structure)
        large = np.bincount(labels.ravel(), minlength=count + 1) >= min_size
        large[0] = False
        num_large = int(large.sum())
        if num_large == 0:
            continue
        new_id = np.zeros(count + 1, dtype=np.int32)
        new_id[large] = np.arange(next_id, next_id + num_large, dtype=np.int32)
        component_map[box] += new_id[labels]  # labels are 0 off the class, and classes do not overlap
        component_class.append(np.full(num_large, cls, dtype=np.int64))
        next_id += num_large
    classes_out = np.concatenate(component_class) if component_class else np.zeros(0, np.int64)
    return component_map, classes_out
