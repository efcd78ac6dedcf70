"""The dataset manifest written by the ``prepare`` stage and read by every later stage.

It holds what later stages need to know about a split without opening the dataset:
ids, image sizes, image-level labels and point labels. Images are numbered from 1 in
split order; that number is the COCO ``image_id`` everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from bestie.errors import BestieError
from bestie.io import read_json

__all__ = ["ImageRecord", "Manifest", "load_manifest"]


@dataclass(frozen=True)
class ImageRecord:
    image_id: int  # COCO id, 1-based in split order
    name: str  # VOC id, the file stem
    width: int
    height: int
    labels: tuple[int, ...]  # class indices present (image-level labels)
    points: np.ndarray | None  # [K, 3] float32 (x, y, class); None when the dataset has none
    has_masks: bool

    @property
    def file_name(self) -> str:
        return f"{self.name}.jpg"

    def to_json(self) -> dict:
        return {
            "image_id": self.image_id,
            "name": self.name,
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
        )


@dataclass(frozen=True)
class Manifest:
    root: str
    class_names: tuple[str, ...]
    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "class_names": list(self.class_names),
            "train": [r.to_json() for r in self.train],
            "val": [r.to_json() for r in self.val],
        }


def load_manifest(path: str | os.PathLike) -> Manifest:
    raw = read_json(path)
    try:
        return Manifest(
            root=raw["root"],
            class_names=tuple(raw["class_names"]),
            train=tuple(ImageRecord.from_json(r) for r in raw["train"]),
            val=tuple(ImageRecord.from_json(r) for r in raw["val"]),
        )
    except (KeyError, TypeError) as err:
        raise BestieError(f"{path}: not a bestie manifest ({err}); re-run the prepare stage") from None
