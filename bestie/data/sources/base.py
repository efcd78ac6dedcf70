"""What a dataset source hands the ``prepare`` stage: one record an image, in one declared shape.

A source reads one on-disk format (VOC folders, a COCO instances file, ...) and nothing else
reads that format: ``prepare`` turns the records into ``data/prepared/`` and every later stage
reads only that and the images. A new format is one module with a class that satisfies
:class:`DatasetSource`, plus its line in :data:`bestie.data.sources.SOURCES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

from bestie.errors import BestieError
from bestie.structures import IGNORE, GroundTruth

if TYPE_CHECKING:
    from bestie.config import DataParams

__all__ = ["SPLITS", "DatasetSource", "SourceImage", "interior_points", "label_maps"]

SPLITS = ("train", "val")  # a source's logical splits; it maps them to its own files


@dataclass(frozen=True)
class SourceImage:
    """One image of a split as a source reads it (pixels already decoded once and checked).

    ``ground_truth``, ``crowd``, ``class_map`` and ``object_map`` are all None for an image
    the dataset has no masks for (e.g. VOC's SBD ``train_aug`` images).
    """

    name: str  # unique in the dataset, a file stem: names the prepared per-image files
    file_name: str  # the dataset's own file name of the image (COCO ``file_name``)
    path: Path  # where later stages open the image (bestie.io.read_image)
    image_id: int  # the dataset's own image id
    width: int
    height: int
    labels: tuple[int, ...]  # sorted class indices present (image-level labels)
    points: np.ndarray | None  # [K, 3] float32 (x, y, class); None: the dataset has none
    ground_truth: GroundTruth | None  # instances: masks [N, H, W] bool, classes [N]
    crowd: GroundTruth | None  # void regions with a class (COCO ``iscrowd``); VOC: none
    class_map: np.ndarray | None  # [H, W] uint8: 0 background, c+1 class c, 255 void
    object_map: np.ndarray | None  # [H, W] uint8: 0 background, k instance k, 255 void


class DatasetSource(Protocol):
    """A dataset in one on-disk format, read split by split (``"train"``, ``"val"``)."""

    root: Path
    class_names: tuple[str, ...]  # class index -> name
    category_ids: tuple[int, ...]  # class index -> the dataset's own category id, ascending

    @classmethod
    def from_params(cls, data: DataParams) -> DatasetSource: ...

    def num_images(self, split: str) -> int: ...

    def images(self, split: str, need_masks: bool) -> Iterator[SourceImage]:
        """Every image of ``split`` in the dataset's order; BestieError naming the file and
        entry on any fault; with ``need_masks``, an image without masks is such a fault."""
        ...


def interior_points(masks: np.ndarray) -> np.ndarray:
    """One point inside each mask: its pixel farthest from the mask border.

    That is where an annotator clicking "the middle of the object" lands, and unlike the
    centroid it is always inside, also for rings and crescents. Ties go to the first pixel
    in raster order, so the result is deterministic.

    Args:
        masks: [N, H, W] bool.
    Returns:
        [N, 2] float32 (x, y).
    """
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):  # a handful of instances an image
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            raise ValueError(f"mask {i} is empty")
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        # Pad the box by one so pixels on the box edge see the outside as border.
        crop = np.pad(mask[y0:y1, x0:x1], 1)
        distance = ndimage.distance_transform_edt(crop)
        y, x = np.unravel_index(np.argmax(distance), distance.shape)
        points[i] = (x0 + x - 1, y0 + y - 1)
    return points


def label_maps(instances: GroundTruth, crowd: GroundTruth, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Class and object maps of possibly overlapping instance masks.

    A later instance covers an earlier one where they overlap (COCO files list no depth
    order); crowd regions are void (255) where no instance covers them.

    Args:
        instances: masks [N, H, W] bool (N <= 254), classes [N].
        crowd: masks [M, H, W] bool.
        where: names the image in the error for N > 254.
    Returns:
        class_map [H, W] uint8 (0, c+1, 255), object_map [H, W] uint8 (0, k, 255).
    """
    masks = instances.masks
    if len(masks) >= IGNORE:
        raise BestieError(f"{where}: {len(masks)} instances; label PNGs hold at most {IGNORE - 1}")
    covered = masks.any(axis=0)  # [H, W]
    last = len(masks) - 1 - np.argmax(masks[::-1], axis=0) if len(masks) else np.zeros(covered.shape, np.int64)
    void = crowd.masks.any(axis=0) & ~covered if len(crowd.masks) else np.zeros_like(covered)
    class_values = np.asarray(instances.classes, dtype=np.int64) + 1
    class_map = np.where(covered, class_values[last] if len(masks) else 0, np.where(void, IGNORE, 0))
    object_map = np.where(covered, last + 1, np.where(void, IGNORE, 0))
    return class_map.astype(np.uint8), object_map.astype(np.uint8)
