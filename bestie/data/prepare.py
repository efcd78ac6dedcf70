"""Check a VOC-format root and describe it: the work of the ``prepare`` stage."""

from __future__ import annotations

import os

import numpy as np
from tqdm import tqdm

from bestie.coco import build_coco, masks_to_annotations
from bestie.data.manifest import ImageRecord, Manifest
from bestie.data.voc import VOCDataset
from bestie.errors import BestieError

__all__ = ["prepare_dataset"]


def _records(dataset: VOCDataset, need_masks: bool) -> tuple[list[ImageRecord], list[dict], list[dict]]:
    """Read and check every image of a split.

    Returns the manifest records and the COCO ``images`` and ``annotations`` of the
    images that have instance masks.
    """
    records, images, annotations = [], [], []
    for index, name in enumerate(tqdm(dataset.ids, desc=f"prepare {dataset.split}", disable=None)):
        image_id = index + 1
        pixels = dataset.read_image(name)  # decodes fully: catches truncated files
        height, width = pixels.shape[:2]
        has_masks = dataset.has_masks(name)
        if need_masks and not has_masks:
            raise BestieError(f"{dataset.class_mask_path(name)}: mask not found for image {name}")
        points = None
        if has_masks:
            gt = dataset.ground_truth(name)
            labels = dataset.image_labels(name)
            images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height})
            annotations += masks_to_annotations(
                gt.masks, gt.classes, None, image_id=image_id, start_id=len(annotations) + 1
            )
        else:
            labels = dataset.image_labels(name)
        if has_masks or dataset.center_points_path(name).is_file():
            xy, classes = dataset.points(name)
            points = np.concatenate([xy, classes[:, None].astype(np.float32)], axis=1)
        records.append(
            ImageRecord(image_id, name, width, height, tuple(labels), points, has_masks)
        )
    return records, images, annotations


def prepare_dataset(root: str | os.PathLike, train_split: str, val_split: str) -> tuple[Manifest, dict, dict]:
    """Read both splits of ``root``; return the manifest and COCO ground truth of train and val.

    The training split may hold images without masks (labels then come from Annotations);
    every validation image needs its masks, since evaluation compares against them.
    """
    train = VOCDataset(root, train_split)
    val = VOCDataset(root, val_split)
    train_records, train_images, train_annotations = _records(train, need_masks=False)
    val_records, val_images, val_annotations = _records(val, need_masks=True)
    if not val_annotations:
        raise BestieError(f"{root}: split {val_split} holds no object instances to evaluate on")
    names = list(train.class_names)
    manifest = Manifest(str(root), tuple(names), tuple(train_records), tuple(val_records))
    return (
        manifest,
        build_coco(train_images, train_annotations, names),
        build_coco(val_images, val_annotations, names),
    )
