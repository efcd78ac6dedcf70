"""Reader for any dataset in the PASCAL VOC 2012 layout.

```
ROOT/JPEGImages/ID.jpg
ROOT/SegmentationClass/ID.png     0 background, c+1 class c, 255 void
ROOT/SegmentationObject/ID.png    0 background, k instance k, 255 void
ROOT/Annotations/ID.xml           optional: object names (image-level labels)
ROOT/ImageSets/Segmentation/SPLIT.txt
ROOT/Center_points/ID.txt         optional: "x y class_index score" a line
ROOT/classes.txt                  optional: class names in label order (else the VOC 20)
```

Every fault a user can make in such a folder raises :class:`BestieError` naming the file.
Images without masks are allowed (e.g. the SBD ``train_aug`` images) as long as their
image-level labels can come from ``Annotations``; evaluation splits need masks.

:class:`VOCSource` is this format behind :class:`bestie.data.sources.base.DatasetSource`: the
``prepare`` stage's only way in. Image ids are 1-based positions in the split file (VOC has
no numeric ids), category ids are class index + 1.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from bestie.data.png import read_label_png
from bestie.data.precomputed import read_point_file
from bestie.data.sources.base import SourceImage, interior_points
from bestie.errors import BestieError
from bestie.io import read_image
from bestie.structures import IGNORE, GroundTruth

if TYPE_CHECKING:
    from bestie.config import DataParams

__all__ = ["VOC_CLASSES", "VOCDataset", "VOCSource", "read_class_names"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names in label order, one a line: a dataset's ``classes.txt``, or the list
    ``bestie predict --classes`` checks a checkpoint against.

    Raises:
        BestieError: missing or binary file; no names; a name twice; more classes than a
            label PNG can hold.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: class list not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise BestieError(f"{path}: not a text file of class names") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise BestieError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise BestieError(f"{path}: a class name appears twice")
    if len(names) > 254:
        raise BestieError(f"{path}: {len(names)} classes; label PNGs hold at most 254")
    return names


class VOCDataset:
    """One split of a VOC2012-format root.

    Args:
        root: the dataset folder.
        split: name of the list file ``ImageSets/Segmentation/<split>.txt``.
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise BestieError(f"{self.root}: dataset folder not found (params key data.root)")
        for sub in ("JPEGImages", "ImageSets/Segmentation"):
            if not (self.root / sub).is_dir():
                raise BestieError(f"{self.root / sub}: folder not found; is {self.root} a VOC2012-format root?")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise BestieError(f"{split_file}: split file not found")
        self.ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise BestieError(f"{split_file}: split is empty")
        if len(set(self.ids)) != len(self.ids):
            raise BestieError(f"{split_file}: lists an image id twice")

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """``classes.txt`` if the root has one, else the 20 VOC classes."""
        path = self.root / "classes.txt"
        return read_class_names(path) if path.is_file() else VOC_CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- paths -------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def class_mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def object_mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationObject" / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def center_points_path(self, image_id: str) -> Path:
        return self.root / "Center_points" / f"{image_id}.txt"

    def has_masks(self, image_id: str) -> bool:
        return self.class_mask_path(image_id).is_file()

    # -- readers -----------------------------------------------------------------------
    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) from the image header, without decoding the pixels."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise BestieError(f"{path}: image listed in {self.split}.txt not found")
        try:
            with Image.open(path) as image:
                return image.size
        except (UnidentifiedImageError, OSError) as err:
            raise BestieError(f"{path}: unreadable image ({err})") from None

    def read_image(self, image_id: str) -> np.ndarray:
        """[H, W, 3] uint8 RGB. Truncated or corrupt files raise BestieError."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise BestieError(f"{path}: image listed in {self.split}.txt not found")
        return read_image(path)

    def _read_mask(self, path: Path, image_id: str, what: str) -> np.ndarray:
        """The label PNG at ``path``: it must exist, decode, and have image ``image_id``'s size."""
        if not path.is_file():
            raise BestieError(f"{path}: {what} not found for image {image_id}")
        size = self.image_size(image_id)
        try:
            labels = read_label_png(path)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise BestieError(f"{path}: unreadable mask ({err})") from None
        if labels.shape[::-1] != size:
            raise BestieError(
                f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but its image is {size[0]}x{size[1]}"
            )
        return labels

    def read_class_map(self, image_id: str) -> np.ndarray:
        """[H, W] uint8: 0 background, c+1 class c, 255 void; checked against the image."""
        path = self.class_mask_path(image_id)
        labels = self._read_mask(path, image_id, "mask")
        bad = np.setdiff1d(np.unique(labels), np.arange(self.num_classes + 1).tolist() + [IGNORE])
        if bad.size:
            raise BestieError(
                f"{path}: value {bad[0]} is no class (dataset has {self.num_classes} classes)"
            )
        return labels

    def read_object_map(self, image_id: str) -> np.ndarray:
        """[H, W] uint8: 0 background, k instance k, 255 void; checked against the image."""
        return self._read_mask(self.object_mask_path(image_id), image_id, "object mask")

    def ground_truth(self, image_id: str) -> GroundTruth:
        """Instances from SegmentationObject + SegmentationClass, 0 and 255 excluded.

        An instance's class is the class-map value under its pixels. A mask pair that
        disagrees is an error in the dataset: one instance over two classes, or a class in
        SegmentationClass without any instance of it in SegmentationObject (the image would
        keep the class as a label, with no instance or point to learn or evaluate it by).
        """
        return self.instances(image_id, self.read_class_map(image_id), self.read_object_map(image_id))

    def instances(self, image_id: str, class_map: np.ndarray, object_map: np.ndarray) -> GroundTruth:
        """:meth:`ground_truth` of the image's already read class and object maps."""
        instance_ids = np.setdiff1d(np.unique(object_map), [0, IGNORE])
        masks = object_map[None] == instance_ids[:, None, None]
        classes = np.zeros(len(instance_ids), dtype=np.int64)
        for i, mask in enumerate(masks):
            values = np.unique(class_map[mask])
            values = values[(values != 0) & (values != IGNORE)]
            if len(values) != 1:
                raise BestieError(
                    f"{self.object_mask_path(image_id)}: instance {instance_ids[i]} covers class "
                    f"values {values.tolist()} in SegmentationClass/{image_id}.png; expected one class"
                )
            classes[i] = values[0] - 1
        present = np.setdiff1d(np.unique(class_map), [0, IGNORE]) - 1
        without_instance = np.setdiff1d(present, classes)
        if without_instance.size:
            raise BestieError(
                f"{self.class_mask_path(image_id)}: image {image_id} has class "
                f"{self.class_names[without_instance[0]]!r} but SegmentationObject/{image_id}.png holds "
                "no instance of it"
            )
        return GroundTruth(masks=masks, classes=classes)

    def annotation_labels(self, image_id: str) -> list[int]:
        """Sorted class indices named by ``Annotations/ID.xml``."""
        path = self.annotation_path(image_id)
        try:
            tree = ET.parse(path)
        except ET.ParseError as err:
            raise BestieError(f"{path}: malformed XML ({err})") from None
        index = {name: i for i, name in enumerate(self.class_names)}
        labels = set()
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise BestieError(f"{path}: unknown class name {name!r}")
            labels.add(index[name])
        return sorted(labels)

    def image_labels(self, image_id: str, class_map: np.ndarray | None = None) -> list[int]:
        """Sorted class indices present in the image: from the masks (``class_map`` if already
        read), else from Annotations."""
        if class_map is not None or self.has_masks(image_id):
            values = np.unique(self.read_class_map(image_id) if class_map is None else class_map)
            return [int(v) - 1 for v in values if v not in (0, IGNORE)]
        if self.annotation_path(image_id).is_file():
            return self.annotation_labels(image_id)
        raise BestieError(
            f"{self.class_mask_path(image_id)}: image {image_id} has no mask and no "
            f"{self.annotation_path(image_id).name} to take its labels from"
        )

    def points(self, image_id: str, gt: GroundTruth | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One point per object: ``Center_points/ID.txt`` if present, else interior points
        (of ``gt`` if already read).

        Returns:
            points_xy [K, 2] float32, classes [K] int64.
        """
        path = self.center_points_path(image_id)
        if path.is_file():
            return self._read_center_points(path)
        if gt is None and not self.has_masks(image_id):
            raise BestieError(
                f"{path}: no point labels for image {image_id} (no Center_points file and no masks)"
            )
        gt = self.ground_truth(image_id) if gt is None else gt
        return interior_points(gt.masks), gt.classes

    def _read_center_points(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        table = read_point_file(path, self.num_classes)
        return table[:, :2], table[:, 2].astype(np.int64)


class VOCSource:
    """A VOC2012-format root as a :class:`~bestie.data.sources.base.DatasetSource`.

    Args:
        root: the dataset folder.
        split_names: the split file names (``ImageSets/Segmentation/<name>.txt``) of the
            logical splits ``train`` and ``val``.
    """

    def __init__(self, root: str | os.PathLike, split_names: dict[str, str]) -> None:
        self.root = Path(root)
        self.split_names = dict(split_names)

    @classmethod
    def from_params(cls, data: DataParams) -> VOCSource:
        return cls(data.root, {"train": data.train_split, "val": data.val_split})

    def _split(self, split: str) -> VOCDataset:
        return VOCDataset(self.root, self.split_names[split])

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return self._split("train").class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.class_names) + 1))

    def num_images(self, split: str) -> int:
        return len(self._split(split))

    def images(self, split: str, need_masks: bool) -> Iterator[SourceImage]:
        dataset = self._split(split)
        for index, name in enumerate(dataset.ids):
            pixels = dataset.read_image(name)  # decodes fully: catches truncated files
            height, width = pixels.shape[:2]
            has_masks = dataset.has_masks(name)
            if need_masks and not has_masks:
                raise BestieError(f"{dataset.class_mask_path(name)}: mask not found for image {name}")
            gt = class_map = object_map = points = None
            if has_masks:
                class_map, object_map = dataset.read_class_map(name), dataset.read_object_map(name)
                gt = dataset.instances(name, class_map, object_map)
            if has_masks or dataset.center_points_path(name).is_file():
                xy, classes = dataset.points(name, gt)
                points = np.concatenate([xy, classes[:, None].astype(np.float32)], axis=1)
            yield SourceImage(
                name=name, file_name=f"{name}.jpg", path=dataset.image_path(name), image_id=index + 1,
                width=width, height=height, labels=tuple(dataset.image_labels(name, class_map)), points=points,
                ground_truth=gt, crowd=None, class_map=class_map, object_map=object_map,
            )
