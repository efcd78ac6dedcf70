"""Read a dataset through its source and write ``data/prepared/``: the work of the ``prepare`` stage.

Streams: an image's masks are decoded, written (label PNGs, COCO annotations) and dropped
before the next image is read, so memory does not grow with the dataset's masks::

    OUT/manifest.json             bestie.data.manifest.Manifest
    OUT/train_gt.json                    COCO ground truth of the training images that have masks
    OUT/class_maps/<split>/<name>.png    class maps of the images with masks (0, c+1, 255 void)
    OUT/object_maps/<split>/<name>.png   their object maps (0 background, k object k, 255 void)
    VAL_GT                        COCO ground truth of the validation images

COCO files use the dataset's own image and category ids; crowd regions are ``iscrowd`` 1.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from bestie.coco import CocoWriter, masks_to_annotations
from bestie.data.manifest import ImageRecord, Manifest, class_map_path, object_map_path
from bestie.data.png import write_label_png
from bestie.data.sources.base import SPLITS, DatasetSource, SourceImage
from bestie.errors import BestieError
from bestie.io import atomic_dir, write_json

__all__ = ["prepare_dataset"]


def _record(image: SourceImage) -> ImageRecord:
    return ImageRecord(
        image.image_id, image.name, image.width, image.height, image.labels, image.points,
        image.ground_truth is not None, image.file_name, str(image.path),
    )


def _annotations(image: SourceImage, category_ids, start_id: int) -> list[dict]:
    """The image's instances, then its crowd regions, as COCO annotations numbered from ``start_id``."""
    gt = image.ground_truth
    annotations = masks_to_annotations(gt.masks, gt.classes, None, image.image_id, start_id, category_ids)
    if image.crowd is not None and len(image.crowd):
        annotations += masks_to_annotations(
            image.crowd.masks, image.crowd.classes, None, image.image_id, start_id + len(annotations),
            category_ids, iscrowd=1,
        )
    return annotations


def _write_split(
    source: DatasetSource, split: str, gt: CocoWriter, out: Path, need_masks: bool
) -> list[ImageRecord]:
    """Read every image of ``split``; add the ones with masks to ``gt`` and write their label
    maps under ``out``; return the manifest records."""
    records, ids, names = [], set(), set()
    images = source.images(split, need_masks)
    for image in tqdm(images, total=source.num_images(split), desc=f"prepare {split}", disable=None):
        for value, seen, what in ((image.image_id, ids, "image id"), (image.name, names, "image name")):
            if value in seen:
                raise BestieError(f"{source.root}: {split} split has {what} {value!r} twice")
            seen.add(value)
        records.append(_record(image))
        if image.ground_truth is None:
            continue
        gt.add(
            {"id": image.image_id, "file_name": image.file_name, "width": image.width, "height": image.height},
            _annotations(image, source.category_ids, gt.num_annotations + 1),
        )
        write_label_png(class_map_path(out, split, image.name), image.class_map)
        write_label_png(object_map_path(out, split, image.name), image.object_map)
    return records


def prepare_dataset(source: DatasetSource, out: str | os.PathLike, val_gt: str | os.PathLike) -> Manifest:
    """Write ``out`` (manifest, train ground truth and label maps) and ``val_gt`` from ``source``;
    return the manifest. On any error nothing is written.

    The training split may hold images without masks (VOC: labels then come from
    Annotations); every validation image needs its masks, since evaluation compares against them.
    """
    names, category_ids = source.class_names, source.category_ids
    if list(category_ids) != sorted(set(category_ids)):
        raise BestieError(f"{source.root}: category ids must be distinct, in class order ascending")
    with (
        atomic_dir(out, replace=True) as tmp,
        CocoWriter(Path(tmp) / "train_gt.json", names, category_ids) as train_gt,
        CocoWriter(val_gt, names, category_ids) as val_coco,
    ):
        for split in SPLITS:
            for folder in (class_map_path(tmp, split, "x").parent, object_map_path(tmp, split, "x").parent):
                folder.mkdir(parents=True)
        train = _write_split(source, "train", train_gt, Path(tmp), need_masks=False)
        val = _write_split(source, "val", val_coco, Path(tmp), need_masks=True)
        if not val_coco.num_annotations:
            raise BestieError(f"{source.root}: the val split holds no object instances to evaluate on")
        manifest = Manifest(str(source.root), tuple(names), tuple(category_ids), tuple(train), tuple(val))
        write_json(Path(tmp) / "manifest.json", manifest.to_json(), indent=None)
    return manifest
