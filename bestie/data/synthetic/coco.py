"""Any VOC-format root (the synthetic dataset included) written again in the COCO layout.

For ``data.format: coco`` on the embedded data (``synthesize.coco``), the COCO tests and the
``prepare`` scale benchmark. The COCO files say what the VOC masks say, with ids chosen so
that a lost id mapping shows: category ids are ``CATEGORY_ID_STEP * c + 2`` (not contiguous,
not class + 1) and image ids are odd in train and even in val (not split positions)::

    OUT/annotations/instances_train2017.json   compressed RLE masks
    OUT/annotations/instances_val2017.json
    OUT/train2017/<name>.jpg                    hard links to (or copies of) the VOC images
    OUT/val2017/<name>.jpg

VOC's void band has no COCO counterpart, so it is background in the COCO reading.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bestie.coco import CocoWriter, masks_to_annotations
from bestie.data.sources.base import SPLITS
from bestie.data.sources.voc import VOCSource

__all__ = ["CATEGORY_ID_STEP", "COCO_FILES", "voc_to_coco"]

CATEGORY_ID_STEP = 3
COCO_FILES = {split: (f"annotations/instances_{split}2017.json", f"{split}2017") for split in SPLITS}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def voc_to_coco(voc_root: str | os.PathLike, out: str | os.PathLike, split_names: dict[str, str]) -> None:
    """Write the COCO files of the VOC splits ``split_names`` (``train``/``val`` -> split file
    name) under ``out`` (which may be ``voc_root``). Streams: one image's masks at a time."""
    source = VOCSource(voc_root, split_names)
    category_ids = [CATEGORY_ID_STEP * c + 2 for c in range(len(source.class_names))]
    for number, split in enumerate(SPLITS):
        annotation_file, image_dir = (Path(out) / name for name in COCO_FILES[split])
        image_dir.mkdir(parents=True, exist_ok=True)
        with CocoWriter(annotation_file, source.class_names, category_ids) as writer:
            for image in source.images(split, need_masks=True):
                image_id = 2 * image.image_id - 1 + number
                _link_or_copy(image.path, image_dir / image.file_name)
                gt = image.ground_truth
                writer.add(
                    {"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height},
                    masks_to_annotations(gt.masks, gt.classes, None, image_id, writer.num_annotations + 1, category_ids),
                )
