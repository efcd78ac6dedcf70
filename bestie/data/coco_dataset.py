"""A COCO instances file and its image folder as torchvision detection samples (Mask R-CNN training).

Samples are keyed by ``(index, seed)`` like every training set here (see
:class:`bestie.training.IterationBatches`): the seed decides the augmentation, so a batch is a
pure function of the iteration and a resumed run replays it exactly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from bestie.coco import annotation_masks, load_coco_gt
from bestie.errors import BestieError
from bestie.io import read_image

__all__ = ["CocoInstances", "masks_to_boxes", "to_tensor", "collate_detection"]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 RGB -> [3, H, W] float32 in [0, 1] (torchvision detection models' input)."""
    return torch.from_numpy(np.divide(image, 255, dtype=np.float32)).permute(2, 0, 1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[N, H, W] bool, none empty -> [N, 4] float32 (x0, y0, x1, y1), pixel-edge coordinates.

    x1/y1 are one past the last pixel, so a one-pixel mask has a 1 x 1 box (torchvision refuses
    boxes without area).
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


class CocoInstances(Dataset):
    """Images and instance masks of a COCO instances file (RLE or polygon segmentations).

    Args:
        annotation_file: COCO JSON.
        image_paths: image id -> where to open the image (the prepared manifest's paths).
        flip: mirror a sample horizontally with probability 0.5 (drawn from its seed).
        skip_empty: leave out images without annotations (with pseudo labels, an image without
            instances more likely holds missed objects than none, so it would teach misses).

    Item ``(index, seed)`` (or a plain ``index``: no augmentation) ->
        image [3, H, W] float32 in [0, 1];
        target {"boxes": [N, 4] float32 (x0, y0, x1, y1), "labels": [N] int64 (class + 1, the
        class of a category being its rank among the file's category ids), "masks": [N, H, W]
        uint8, "image_id": int}.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_paths: Mapping[int, str | os.PathLike], *,
                 flip: bool = True, skip_empty: bool = True):
        self.coco = load_coco_gt(annotation_file)
        self.image_paths = image_paths
        self.label_of = {category_id: c + 1 for c, category_id in enumerate(sorted(self.coco.cats))}
        self.flip = flip
        ids = sorted(self.coco.imgs)
        if not ids:
            raise BestieError(f"{annotation_file}: no images to train on")
        unknown = [i for i in ids if i not in image_paths]
        if unknown:
            raise BestieError(f"{annotation_file}: image id {unknown[0]!r} is no image of the prepared dataset")
        annotated = [i for i in ids if self.coco.imgToAnns[i]]
        if not annotated:
            # A weak first stage can leave no pseudo instance at all (e.g. a very short run):
            # train on background only, so the pipeline still ends with honest (zero) metrics.
            print(f"warning: {annotation_file}: no image has annotations; Mask R-CNN sees background only",
                  file=sys.stderr)
        self.image_ids = annotated if skip_empty and annotated else ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_image(self, image_id: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB, checked against the annotation file's size."""
        info = self.coco.imgs[image_id]
        path = self.image_paths[image_id]
        array = read_image(path)
        if array.shape[:2] != (info["height"], info["width"]):
            raise BestieError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} but the annotation file says "
                f"{info['width']}x{info['height']}"
            )
        return array

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image_id = self.image_ids[index]
        image = self.read_image(image_id)
        height, width = image.shape[:2]
        annotations = self.coco.imgToAnns[image_id]
        masks = annotation_masks(annotations, height, width)
        keep = masks.any(axis=(1, 2))
        masks = masks[keep]
        labels = np.asarray([self.label_of[a["category_id"]] for a in annotations], dtype=np.int64)[keep]

        if seed is not None and self.flip and np.random.default_rng(seed).random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        target = {
            "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "image_id": int(image_id),
        }
        return to_tensor(image), target


def collate_detection(samples: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size and hold different instance counts."""
    images, targets = zip(*samples)
    return list(images), list(targets)
