"""Instance pseudo labels for the training split: storage and quality measures.

The ``pseudo_labels`` stage stores, for every training image, the accepted instances of
semantic knowledge transfer (:mod:`bestie.transfer`) compactly: one instance-id PNG
(0 none, k instance k) and one JSON record of every instance's class and center.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from bestie.coco import encode_masks
from bestie.data.png import read_label_png, write_label_png
from bestie.errors import BestieError
from bestie.io import read_json, write_json
from bestie.structures import PseudoLabel

__all__ = ["save_pseudo_labels", "load_pseudo_label", "load_records", "pseudo_label_metrics"]

RECORDS = "instances.json"


def save_pseudo_labels(directory: str | os.PathLike, results: dict[str, PseudoLabel]) -> None:
    """Write ``<name>.png`` per image and one ``instances.json`` into ``directory``."""
    directory = Path(directory)
    records = {}
    for name, result in results.items():
        if result.num_instances > 254:
            raise BestieError(f"{name}: {result.num_instances} pseudo instances; a label PNG holds 254")
        write_label_png(directory / f"{name}.png", result.instance_map.astype(np.uint8))
        records[name] = {
            "classes": result.classes.tolist(),
            "centers": np.round(result.centers.astype(np.float64), 3).tolist(),
        }
    write_json(directory / RECORDS, records, indent=None)


def load_records(directory: str | os.PathLike) -> dict[str, dict]:
    return read_json(Path(directory) / RECORDS)


def load_pseudo_label(directory: str | os.PathLike, name: str, record: dict) -> PseudoLabel:
    path = Path(directory) / f"{name}.png"
    if not path.is_file():
        raise BestieError(f"{path}: pseudo label not found; re-run the pseudo_labels stage")
    return PseudoLabel(
        instance_map=read_label_png(path),
        classes=np.asarray(record["classes"], dtype=np.int64),
        centers=np.asarray(record["centers"], dtype=np.float32).reshape(-1, 2),
    )


def _instance_masks(instance_map: np.ndarray, count: int) -> np.ndarray:
    return instance_map[None] == np.arange(1, count + 1)[:, None, None]


def match_at_iou(
    pred_masks: np.ndarray, pred_classes: np.ndarray, gt_masks: np.ndarray, gt_classes: np.ndarray, iou: float = 0.5
) -> int:
    """Number of one-to-one matches of same-class instances with mask IoU >= ``iou``.

    At IoU > 0.5 a match is unique on both sides, so counting the pairs above the
    threshold is exact; below it, a greedy best-first assignment is used.
    """
    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return 0
    ious = mask_utils.iou(encode_masks(pred_masks), encode_masks(gt_masks), [0] * len(gt_masks))
    ious = np.asarray(ious) * (pred_classes[:, None] == gt_classes[None, :])
    matched = 0
    while ious.size and ious.max() >= iou:
        p, g = np.unravel_index(np.argmax(ious), ious.shape)
        ious[p, :] = -1
        ious[:, g] = -1
        matched += 1
    return matched


def pseudo_label_metrics(results: dict[str, PseudoLabel], ground_truth: dict) -> dict[str, float]:
    """Pseudo-instance quality against ground-truth instances (images that have them).

    Args:
        results: accepted instances per image name.
        ground_truth: per image name, an object with ``masks`` [N, H, W] and ``classes`` [N].

    Returns flat metrics: precision and recall of pseudo instances at mask IoU 0.5 (recall
    is the share of ground-truth instances that were accepted as a pseudo instance), and the
    rejected components split into "no point" and "two or more points".
    """
    accepted = matched = num_gt = 0
    for name, gt in ground_truth.items():
        result = results[name]
        masks = _instance_masks(result.instance_map, result.num_instances)
        accepted += result.num_instances
        num_gt += len(gt.classes)
        matched += match_at_iou(masks, result.classes, gt.masks, gt.classes)
    no_point = sum(r.rejected_no_point for r in results.values())
    multi_point = sum(r.rejected_multi_point for r in results.values())
    rejected = no_point + multi_point
    return {
        "images": len(results),
        "accepted_instances": sum(r.num_instances for r in results.values()),
        "precision50": 100.0 * matched / max(accepted, 1),
        "recall50": 100.0 * matched / max(num_gt, 1),
        "rejected_components": rejected,
        "rejected_no_point": no_point,
        "rejected_multi_point": multi_point,
        "rejected_multi_point_share": 100.0 * multi_point / max(rejected, 1),
    }
