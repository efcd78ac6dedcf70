"""The dataset manifest written by the ``prepare`` stage and read by every later stage.

It holds what later stages need to know about a split without opening the dataset: names,
image paths, sizes, image-level labels and point labels, with the dataset's own image and
category ids so that every COCO file written uses them. Later stages open images only
through ``record.path`` (bestie.io.read_image) and the ground-truth label maps of
``prepare`` (:func:`class_map_path`, :func:`object_map_path`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bestie.errors import BestieError
from bestie.io import read_json

__all__ = ["ImageRecord", "Manifest", "load_manifest", "class_map_path", "object_map_path"]



def class_map_path(prepared: str | os.PathLike, split: str, name: str) -> Path:
    """Ground-truth class map of image ``name`` of ``split`` (0 background, c+1 class c, 255 void)."""
    return Path(prepared) / "class_maps" / split / f"{name}.png"


def object_map_path(prepared: str | os.PathLike, split: str, name: str) -> Path:
    """Ground-truth object map of image ``name`` of ``split`` (0 background, k object k, 255 void)."""
    return Path(prepared) / "object_maps" / split / f"{name}.png"


@dataclass(frozen=True)
class ImageRecord:
    image_id: int  # the dataset's own image id (VOC: 1-based position in the split)
    name: str  # unique file stem: names the per-image files of every stage
    width: int
    height: int
    labels: tuple[int, ...]  # class indices present (image-level labels)
    points: np.ndarray | None  # [K, 3] float32 (x, y, class); None when the dataset has none
    has_masks: bool
    file_name: str  # the dataset's own file name of the image
    path: str  # where to open the image

    def to_json(self) -> dict:
        return {
            "image_id": self.image_id,
            "name": self.name,
            "file_name": self.file_name,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "labels": list(self.labels),
            "points": None if self.points is None else self.points.tolist(),
            "has_masks": self.has_masks,
        }

    @classmethod
    def from_json(cls, raw: dict) -> ImageRecord:
        points = raw["points"]
        return cls(
            image_id=raw["image_id"],
            name=raw["name"],
            width=raw["width"],
            height=raw["height"],
            labels=tuple(raw["labels"]),
            points=None if points is None else np.asarray(points, dtype=np.float32).reshape(-1, 3),
            has_masks=raw["has_masks"],
            file_name=raw["file_name"],
            path=raw["path"],
        )


@dataclass(frozen=True)
class Manifest:
    root: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]  # class index -> the dataset's own category id, ascending
    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_paths(self, split: str) -> dict[int, str]:
        """Image id -> image path, of ``split`` (``train`` or ``val``)."""
        return {record.image_id: record.path for record in getattr(self, split)}

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "train": [r.to_json() for r in self.train],
            "val": [r.to_json() for r in self.val],
        }


def load_manifest(path: str | os.PathLike) -> Manifest:
    raw = read_json(path)
    try:
        return Manifest(
            root=raw["root"],
            class_names=tuple(raw["class_names"]),
            category_ids=tuple(raw["category_ids"]),
            train=tuple(ImageRecord.from_json(r) for r in raw["train"]),
            val=tuple(ImageRecord.from_json(r) for r in raw["val"]),
        )
    except (KeyError, TypeError) as err:
        raise BestieError(f"{path}: not a bestie manifest ({err}); re-run the prepare stage") from None
