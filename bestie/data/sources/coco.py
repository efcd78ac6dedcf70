"""Reader for any dataset in the COCO instances format (COCO 2017 and its kind).

```
ROOT/annotations/instances_train2017.json   images, annotations, categories
ROOT/annotations/instances_val2017.json
ROOT/train2017/<file_name>                  image files, named by the JSON's file_name
ROOT/val2017/<file_name>
```

(names configurable: params ``data.coco``). Segmentations may be polygons, RLE or
uncompressed RLE. ``iscrowd`` regions are void (255 in the label maps, ignored like VOC's
void) and stay crowd annotations in the prepared ground truth, which pycocotools ignores.
Categories are taken in ascending id order: class index c is the c-th smallest id, so the
80 COCO classes (ids up to 90) are indices 0..79 inside and their own ids in every COCO file
written. Annotations whose mask is empty are dropped (nothing to learn or score).

Point labels come from an optional points file, a JSON list of
``{"image_id": int, "category_id": int, "x": float, "y": float}`` (pixel coordinates; an
image absent from the list has no points); without one, every instance gets one interior point.

Every fault raises :class:`BestieError` naming the file and the entry.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from functools import cached_property
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bestie.coco import decode_segmentation
from bestie.data.sources.base import SourceImage, interior_points, label_maps
from bestie.errors import BestieError
from bestie.io import read_image, read_json
from bestie.structures import IGNORE, GroundTruth

if TYPE_CHECKING:
    from bestie.config import DataParams

__all__ = ["CocoSource"]


def _entries(path: Path, raw: Any, key: str, required: tuple[str, ...]) -> list[dict]:
    """``raw[key]`` as a list of objects that have every ``required`` field."""
    entries = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise BestieError(f"{path}: no '{key}' list; is it a COCO instances file?")
    for i, entry in enumerate(entries):
        missing = [name for name in required if not isinstance(entry, dict) or name not in entry]
        if missing:
            raise BestieError(f"{path}: {key}[{i}] has no {missing[0]!r}")
    return entries


def _unique_ids(path: Path, entries: list[dict], key: str) -> None:
    seen = set()
    for i, entry in enumerate(entries):
        if entry["id"] in seen:
            raise BestieError(f"{path}: {key}[{i}] repeats id {entry['id']!r}")
        seen.add(entry["id"])


class _Split:
    """One annotation file, checked: categories by id, images, annotations grouped by image."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = read_json(path)
        categories = _entries(path, raw, "categories", ("id", "name"))
        self.images = _entries(path, raw, "images", ("id", "file_name", "width", "height"))
        annotations = _entries(path, raw, "annotations", ("id", "image_id", "category_id", "segmentation"))
        for key, entries in (("categories", categories), ("images", self.images)):
            _unique_ids(path, entries, key)
        if len(categories) >= IGNORE:
            raise BestieError(f"{path}: {len(categories)} categories; label PNGs hold at most {IGNORE - 1}")
        categories = sorted(categories, key=lambda c: c["id"])
        self.category_ids = tuple(c["id"] for c in categories)
        self.class_names = tuple(str(c["name"]) for c in categories)
        class_of = {category_id: c for c, category_id in enumerate(self.category_ids)}
        image_ids = {image["id"] for image in self.images}
        # image id -> [(index in the file, annotation)]: the file's order, and what to name in errors
        self.annotations: dict[Any, list[tuple[int, dict]]] = defaultdict(list)
        for i, annotation in enumerate(annotations):
            if annotation["image_id"] not in image_ids:
                raise BestieError(
                    f"{path}: annotations[{i}] (id {annotation['id']}) points to image_id "
                    f"{annotation['image_id']!r}, which is not in 'images'"
                )
            if annotation["category_id"] not in class_of:
                raise BestieError(
                    f"{path}: annotations[{i}] (id {annotation['id']}) has category_id "
                    f"{annotation['category_id']!r}, which is not in 'categories'"
                )
            self.annotations[annotation["image_id"]].append((i, annotation))
        self.class_of = class_of


def _read_points(path: Path, split: _Split) -> dict[Any, np.ndarray]:
    """A points file -> image id -> [K, 3] float32 (x, y, class)."""
    raw = read_json(path)
    if not isinstance(raw, list):
        raise BestieError(f"{path}: expected a JSON list of {{image_id, category_id, x, y}} points")
    sizes = {image["id"]: (image["width"], image["height"]) for image in split.images}
    rows: dict[Any, list[list[float]]] = defaultdict(list)
    for i, point in enumerate(raw):
        if not isinstance(point, dict) or any(k not in point for k in ("image_id", "category_id", "x", "y")):
            raise BestieError(f"{path}: [{i}] needs image_id, category_id, x and y")
        if point["image_id"] not in sizes:
            raise BestieError(f"{path}: [{i}] has image_id {point['image_id']!r}, not in {split.path.name}")
        if point["category_id"] not in split.class_of:
            raise BestieError(f"{path}: [{i}] has category_id {point['category_id']!r}, not in {split.path.name}")
        x, y = point["x"], point["y"]
        width, height = sizes[point["image_id"]]
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in (x, y)) or not (
            0 <= x < width and 0 <= y < height
        ):
            raise BestieError(f"{path}: [{i}] point ({x!r}, {y!r}) is not inside its {width}x{height} image")
        rows[point["image_id"]].append([x, y, split.class_of[point["category_id"]]])
    return {image_id: np.asarray(r, dtype=np.float32).reshape(-1, 3) for image_id, r in rows.items()}


class CocoSource:
    """A COCO-format root as a :class:`~bestie.data.sources.base.DatasetSource`.

    Args:
        root: the dataset folder.
        annotation_files, image_dirs, points_files: per logical split (``train``, ``val``),
            relative to ``root``; a points file may be None.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        annotation_files: dict[str, str],
        image_dirs: dict[str, str],
        points_files: dict[str, str | None],
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise BestieError(f"{self.root}: dataset folder not found (params key data.root)")
        self.annotation_files = {k: self.root / v for k, v in annotation_files.items()}
        self.image_dirs = {k: self.root / v for k, v in image_dirs.items()}
        self.points_files = {k: None if v is None else self.root / v for k, v in points_files.items()}
        self._loaded: tuple[str, _Split] | None = None  # one split at a time: they can be large

    @classmethod
    def from_params(cls, data: DataParams) -> CocoSource:
        files = data.coco
        return cls(
            data.root,
            {"train": files.train_annotations, "val": files.val_annotations},
            {"train": files.train_images, "val": files.val_images},
            {"train": files.train_points, "val": files.val_points},
        )

    def _split(self, split: str) -> _Split:
        if self._loaded is None or self._loaded[0] != split:
            self._loaded = None  # free the other split first
            self._loaded = (split, _Split(self.annotation_files[split]))
        return self._loaded[1]

    @cached_property
    def _categories(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        train = self._split("train")
        return train.class_names, train.category_ids

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._categories[0]

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self._categories[1]

    def num_images(self, split: str) -> int:
        return len(self._split(split).images)

    def images(self, split: str, need_masks: bool) -> Iterator[SourceImage]:
        """Every image of the split's file; all have masks (an image without annotations has
        no objects), so ``need_masks`` asks nothing more."""
        data = self._split(split)
        path = data.path
        if (data.class_names, data.category_ids) != (self.class_names, self.category_ids):
            raise BestieError(f"{path}: categories differ from {self.annotation_files['train']}")
        points_file = self.points_files[split]
        given_points = None if points_file is None else _read_points(points_file, data)
        names: dict[str, int] = {}
        for i, info in enumerate(data.images):
            where = f"{path}: images[{i}] (id {info['id']})"
            name = Path(str(info["file_name"])).stem
            if name in names:
                raise BestieError(f"{where}: file name stem {name!r} repeats images[{names[name]}]")
            names[name] = i
            image_path = self.image_dirs[split] / str(info["file_name"])
            try:
                pixels = read_image(image_path)  # decodes fully: catches truncated files
            except BestieError as err:
                raise BestieError(f"{where}: {err}") from None
            height, width = pixels.shape[:2]
            if (width, height) != (info["width"], info["height"]):
                raise BestieError(
                    f"{where}: {image_path} is {width}x{height}, the file says {info['width']}x{info['height']}"
                )
            instances, crowd = self._instances(data, info["id"], height, width)
            class_map, object_map = label_maps(instances, crowd, where)
            if given_points is None:
                points = np.concatenate(
                    [interior_points(instances.masks), instances.classes[:, None].astype(np.float32)], axis=1
                ) if len(instances) else np.zeros((0, 3), np.float32)
            else:
                points = given_points.get(info["id"], np.zeros((0, 3), np.float32))
            labels = np.union1d(instances.classes, crowd.classes).astype(int).tolist()
            yield SourceImage(
                name=name, file_name=str(info["file_name"]), path=image_path, image_id=info["id"],
                width=width, height=height, labels=tuple(labels), points=points,
                ground_truth=instances, crowd=crowd, class_map=class_map, object_map=object_map,
            )

    def _instances(self, data: _Split, image_id: Any, height: int, width: int) -> tuple[GroundTruth, GroundTruth]:
        """The image's instances and crowd regions, each masks [N, H, W] bool and classes [N]."""
        found: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        for i, annotation in data.annotations.get(image_id, []):
            try:
                mask = decode_segmentation(annotation["segmentation"], height, width)
            except BestieError as err:
                raise BestieError(f"{data.path}: annotations[{i}] (id {annotation['id']}): {err}") from None
            if mask.any():
                masks, classes = found[bool(annotation.get("iscrowd", 0))]
                masks.append(mask)
                classes.append(data.class_of[annotation["category_id"]])
        return tuple(
            GroundTruth(
                masks=np.stack(masks) if masks else np.zeros((0, height, width), bool),
                classes=np.asarray(classes, dtype=np.int64),
            )
            for masks, classes in (found[False], found[True])
        )
