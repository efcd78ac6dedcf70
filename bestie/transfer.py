"""Semantic knowledge transfer: semantic map + points -> pseudo instance labels (docs/method.md §3).

For every class c in a semantic map, each connected region of ``map == c + 1`` that is
large enough and holds exactly one point of class c becomes an instance; regions with no
point or several points are rejected (their pixels keep only their semantic label).

Pure numpy/scipy functions, no I/O. Conventions: semantic maps are integer [H, W] with
0 background, c + 1 for class c and 255 void; points are (x, y) pixel coordinates with
pixel (row i, column j) centred at (x, y) = (j, i).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from bestie.spatial import class_components
from bestie.structures import IGNORE, PseudoLabel

__all__ = [
    "semantic_knowledge_transfer",
    "instances_from_ground_truth",
    "filter_points",
]

MAX_LABEL = IGNORE - 1  # map values 1..254 are classes 0..253; 0 is background, 255 void
NUM_LABEL_VALUES = 256


def semantic_knowledge_transfer(
    semantic_map: np.ndarray,
    points_xy: np.ndarray,
    point_classes: np.ndarray,
    *,
    min_size: int = 50,
    center: Literal["centroid", "point"] = "centroid",
    connectivity: Literal[4, 8] = 8,
) -> PseudoLabel:
    """Turn a semantic map and instance points into accepted instances.

    Args:
        semantic_map: [H, W] integer map, 0 background, c + 1 class c, 255 void.
        points_xy: [P, 2] float (x, y) points (peaks or given points).
        point_classes: [P] integer class index of each point (0..253).
        min_size: components with fewer pixels are dropped, neither accepted nor rejected.
        center: ``"centroid"`` (image-level: mean (x, y) of the component's pixels) or
            ``"point"`` (point-level: the component's single point, unrounded).
        connectivity: 8 (full 3x3 neighbourhood) or 4 (cross).

    A point lies in the pixel (round(y), round(x)) clipped to the image, ties rounding up;
    only points of the component's own class count. Instances are numbered by class, then
    by scipy's component order (raster order of each component's first pixel).
    """
    semantic_map = _check_label_map(semantic_map, "semantic_map")
    points_xy, point_classes = _check_points(points_xy, point_classes)
    if min_size < 0:
        raise ValueError(f"min_size: must be >= 0, got {min_size}")
    if center not in ("centroid", "point"):
        raise ValueError(f"center: must be 'centroid' or 'point', got {center!r}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity: must be 4 or 8, got {connectivity!r}")

    # Every component of every class, numbered jointly; label 0 (outside any) has class -1.
    components, classes = class_components(semantic_map.astype(np.uint8, copy=False), connectivity=connectivity)
    component_classes = np.concatenate([np.array([-1], dtype=np.int64), classes])
    num_labels = len(component_classes)  # components + the background label 0
    sizes = np.bincount(components.ravel(), minlength=num_labels)

    # Points that fall in a component of their own class (background's class -1 never matches).
    rows, cols = _point_pixels(points_xy, semantic_map.shape)
    point_component = components[rows, cols]
    counts_in_own = component_classes[point_component] == point_classes
    hit_components = point_component[counts_in_own]
    num_points = np.bincount(hit_components, minlength=num_labels)

    large = sizes >= min_size
    large[0] = False
    accepted = large & (num_points == 1)
    accepted_ids = np.flatnonzero(accepted)  # ascending: by class, then component order

    relabel = np.zeros(num_labels, dtype=np.int32)
    relabel[accepted_ids] = np.arange(1, len(accepted_ids) + 1, dtype=np.int32)
    instance_map = relabel[components]

    if center == "centroid":
        centers = _centroids(instance_map, len(accepted_ids))
    else:
        point_of_component = np.full(num_labels, -1, dtype=np.intp)
        point_of_component[hit_components] = np.flatnonzero(counts_in_own)
        centers = points_xy[point_of_component[accepted_ids]].astype(np.float32)

    return PseudoLabel(
        instance_map=instance_map,
        classes=component_classes[accepted_ids],
        centers=centers.reshape(-1, 2),
        rejected_no_point=int(np.count_nonzero(large & (num_points == 0))),
        rejected_multi_point=int(np.count_nonzero(large & (num_points >= 2))),
    )


def instances_from_ground_truth(object_map: np.ndarray, class_map: np.ndarray) -> PseudoLabel:
    """Ground-truth instances as a :class:`PseudoLabel` (``supervision: full``).

    Args:
        object_map: [H, W] integer map, 0 background, k object k (1..254), 255 void.
        class_map: [H, W] integer semantic map of the same image.

    Every object becomes an accepted instance, numbered in ascending object id. Its class is
    the most frequent class among its pixels in ``class_map`` (0 and 255 do not vote; ties
    go to the lower class); its center is its centroid. Rejection counts are 0.
    """
    object_map = _check_label_map(object_map, "object_map")
    class_map = _check_label_map(class_map, "class_map")
    if object_map.shape != class_map.shape:
        raise ValueError(
            f"class_map: shape {class_map.shape} differs from object_map shape {object_map.shape}"
        )

    object_ids = np.unique(object_map)
    object_ids = object_ids[(object_ids >= 1) & (object_ids <= MAX_LABEL)]
    relabel = np.zeros(NUM_LABEL_VALUES, dtype=np.int32)
    relabel[object_ids] = np.arange(1, len(object_ids) + 1, dtype=np.int32)
    instance_map = relabel[object_map]

    # Majority vote from a joint histogram of (instance, class value) over voting pixels.
    num_instances = len(object_ids)
    voting = (instance_map > 0) & (class_map >= 1) & (class_map <= MAX_LABEL)
    pairs = instance_map[voting].astype(np.int64) * NUM_LABEL_VALUES + class_map[voting]
    votes = np.bincount(pairs, minlength=(num_instances + 1) * NUM_LABEL_VALUES)
    votes = votes.reshape(num_instances + 1, NUM_LABEL_VALUES)[1:]
    unlabelled = votes.sum(axis=1) == 0
    if unlabelled.any():
        raise ValueError(
            f"class_map: object id(s) {object_ids[unlabelled].tolist()} have no class pixel"
        )

    return PseudoLabel(
        instance_map=instance_map,
        classes=votes.argmax(axis=1).astype(np.int64) - 1,
        centers=_centroids(instance_map, num_instances),
    )


def filter_points(
    points_xy: np.ndarray, point_classes: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the points whose score is strictly greater than ``threshold`` (``pseudo_thresh``).

    Args:
        points_xy: [P, 2] (x, y); point_classes: [P]; scores: [P].

    Returns:
        (points_xy [K, 2], point_classes [K]) of the kept points, in their original order.
    """
    points_xy, point_classes = _check_points(points_xy, point_classes)
    scores = np.asarray(scores)
    if scores.shape != point_classes.shape:
        raise ValueError(f"scores: expected shape {point_classes.shape}, got {scores.shape}")
    keep = scores > threshold
    return points_xy[keep], point_classes[keep]


def _centroids(instance_map: np.ndarray, num_instances: int) -> np.ndarray:
    """[N, 2] float32 mean (x, y) of the pixels of instances 1..N of ``instance_map``.

    Every instance must have at least one pixel.
    """
    height, width = instance_map.shape
    labels = instance_map.ravel()
    size = num_instances + 1
    count = np.bincount(labels, minlength=size)[1:]
    sum_x = np.bincount(labels, weights=np.tile(np.arange(width), height), minlength=size)[1:]
    sum_y = np.bincount(labels, weights=np.repeat(np.arange(height), width), minlength=size)[1:]
    return np.stack([sum_x / count, sum_y / count], axis=1).astype(np.float32).reshape(-1, 2)


def _point_pixels(points_xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows [P], cols [P]) of the pixels holding the points: rounded (ties up), clipped."""
    height, width = shape
    rows = np.clip(np.floor(points_xy[:, 1] + 0.5), 0, height - 1).astype(np.intp)
    cols = np.clip(np.floor(points_xy[:, 0] + 0.5), 0, width - 1).astype(np.intp)
    return rows, cols


def _check_label_map(label_map: np.ndarray, name: str) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [H, W] map, got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer map, got dtype {label_map.dtype}")
    if label_map.dtype != np.uint8 and label_map.size and (
        label_map.min() < 0 or label_map.max() >= NUM_LABEL_VALUES
    ):
        raise ValueError(f"{name}: values must lie in 0..255")
    return label_map


def _check_points(
    points_xy: np.ndarray, point_classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    points_xy = np.asarray(points_xy)
    point_classes = np.asarray(point_classes)
    if points_xy.ndim != 2 or points_xy.shape[1] != 2:
        raise ValueError(f"points_xy: expected shape [P, 2], got {points_xy.shape}")
    if not np.issubdtype(points_xy.dtype, np.number):
        raise ValueError(f"points_xy: expected numbers, got dtype {points_xy.dtype}")
    if point_classes.shape != (len(points_xy),):
        raise ValueError(
            f"point_classes: expected shape ({len(points_xy)},), got {point_classes.shape}"
        )
    if point_classes.size and not np.issubdtype(point_classes.dtype, np.integer):
        raise ValueError(f"point_classes: expected integers, got dtype {point_classes.dtype}")
    if not np.isfinite(points_xy).all():
        raise ValueError("points_xy: coordinates must be finite")
    bad = (point_classes < 0) | (point_classes >= MAX_LABEL)
    if bad.any():
        raise ValueError(
            f"point_classes: class index {point_classes[bad][0]} out of range 0..{MAX_LABEL - 1}"
        )
    return points_xy, point_classes.astype(np.int64)
