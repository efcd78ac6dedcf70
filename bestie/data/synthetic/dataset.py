"""The synthetic dataset on disk in the VOC 2012 layout, and statistics of any VOC masks."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from bestie.config import SynthesizeParams
from bestie.data.png import read_label_png, write_label_png
from bestie.data.synthetic.scene import SyntheticImage, render_image
from bestie.data.synthetic.styles import STYLES
from bestie.structures import IGNORE

__all__ = ["generate", "dataset_statistics", "statistics_from_root"]

SPLITS = ("train", "val")


def _annotation(
    image_id: str, sample: SyntheticImage, class_names: Sequence[str]
) -> ET.ElementTree:
    """Minimal VOC XML: file name, size, and one named object (with its box) an instance."""
    height, width = sample.object_map.shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synthetic"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    instances = np.where(sample.object_map == IGNORE, 0, sample.object_map)
    boxes = ndimage.find_objects(instances, len(sample.classes))
    for class_index, (rows, cols) in zip(sample.classes, boxes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[class_index]
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")  # VOC boxes are 1-based and inclusive
        corners = (cols.start + 1, rows.start + 1, cols.stop, rows.stop)
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
            ET.SubElement(bndbox, key).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def generate(root: str | os.PathLike, params: SynthesizeParams) -> None:
    """Write the whole dataset in the VOC 2012 layout into the existing, empty ``root``."""
    root = Path(root)
    class_names = STYLES[params.style].class_names[: params.num_classes]
    folders = ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations")
    for sub in (*folders, "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in class_names))
    counts = {"train": params.num_train, "val": params.num_val}
    with tqdm(total=sum(counts.values()), desc="synthesize", unit="img", disable=None) as progress:
        for split, count in counts.items():
            ids = [f"{split}_{index:06d}" for index in range(count)]
            list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            list_file.write_text("".join(f"{image_id}\n" for image_id in ids))
            for index, image_id in enumerate(ids):
                sample = render_image(params, split, index)
                jpeg = root / "JPEGImages" / f"{image_id}.jpg"
                Image.fromarray(sample.image).save(jpeg, quality=90)
                write_label_png(root / "SegmentationClass" / f"{image_id}.png", sample.class_map)
                write_label_png(root / "SegmentationObject" / f"{image_id}.png", sample.object_map)
                xml = root / "Annotations" / f"{image_id}.xml"
                _annotation(image_id, sample, class_names).write(xml, encoding="utf-8")
                progress.update()


# -- statistics --------------------------------------------------------------------------
def _has_touching_pair(class_map: np.ndarray, object_map: np.ndarray, void_width: int) -> bool:
    """Whether two instances of one class are separated by at most the void band."""
    ids = np.flatnonzero(np.bincount(object_map.ravel(), minlength=256)[1:IGNORE]) + 1
    instance_class = np.zeros(256, dtype=np.uint8)
    instance_class[object_map.ravel()] = class_map.ravel()
    reach = np.ones((3, 3), dtype=bool)
    for c in np.unique(instance_class[ids]):
        same = ids[instance_class[ids] == c]
        for k in same[:-1]:  # each pair is seen from its first member
            grown = ndimage.binary_dilation(object_map == k, reach, iterations=void_width + 1)
            if np.isin(object_map[grown], same[same > k]).any():
                return True
    return False


def dataset_statistics(
    class_maps: Sequence[np.ndarray], object_maps: Sequence[np.ndarray], void_width: int = 1
) -> dict[str, float]:
    """Dataset statistics measured from VOC masks: flat keys, numbers only.

    Args:
        class_maps: per image [H, W] uint8 (0 background, c+1 class c, 255 void).
        object_maps: per image [H, W] uint8 (0 background, k instance k, 255 void).
        void_width: the void band's width; two instances touch if one, dilated by
            ``void_width + 1`` px (8-connected), meets the other.
    """
    if len(class_maps) != len(object_maps) or not class_maps:
        raise ValueError(
            "need as many class maps as object maps, at least one; "
            f"got {len(class_maps)} and {len(object_maps)}"
        )
    instances, classes, areas, touching, void, pixels = [], [], [], 0, 0, 0
    for class_map, object_map in zip(class_maps, object_maps):
        if class_map.shape != object_map.shape:
            raise ValueError(
                f"class map {class_map.shape} and object map {object_map.shape} differ in size"
            )
        counts = np.bincount(object_map.ravel(), minlength=256)
        sizes = counts[1:IGNORE][counts[1:IGNORE] > 0]
        present = np.bincount(class_map.ravel(), minlength=256)[1:IGNORE]
        instances.append(len(sizes))
        classes.append(int((present > 0).sum()))
        areas.extend(sizes.tolist())
        touching += _has_touching_pair(class_map, object_map, void_width)
        void += int(counts[IGNORE])
        pixels += object_map.size
    percentiles = np.percentile(areas, [5, 25, 50, 75, 95]) if areas else np.zeros(5)
    return {
        "images": float(len(instances)),
        "instances": float(sum(instances)),
        "instances_per_image_mean": float(np.mean(instances)),
        "instances_per_image_min": float(min(instances)),
        "instances_per_image_max": float(max(instances)),
        "classes_per_image_mean": float(np.mean(classes)),
        "touching_same_class_share": touching / len(instances),
        **{f"instance_area_p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), percentiles)},
        "void_share": void / pixels,
    }


def statistics_from_root(
    root: str | os.PathLike, ids: Sequence[str] | None = None, void_width: int = 1
) -> dict[str, float]:
    """:func:`dataset_statistics` of the masks written under ``root`` (default: every split)."""
    root = Path(root)
    if ids is None:
        lists = [root / "ImageSets" / "Segmentation" / f"{split}.txt" for split in SPLITS]
        ids = [image_id for path in lists for image_id in path.read_text().split()]
    class_maps = [read_label_png(root / "SegmentationClass" / f"{i}.png") for i in ids]
    object_maps = [read_label_png(root / "SegmentationObject" / f"{i}.png") for i in ids]
    return dataset_statistics(class_maps, object_maps, void_width)
