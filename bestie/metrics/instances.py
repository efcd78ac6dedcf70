"""Instance masks against ground-truth instances.

- :func:`voc_instance_map`: the classic VOC / SDS instance mask AP at several IoU
  thresholds (``voc_map25`` ... ``voc_map75``), the numbers BESTIE's VOC table reports.
- :func:`coco_mask_ap`: COCO mask AP, AP50, AP75 via pycocotools' COCOeval.
- :func:`evaluate_instances`: both, as one flat dict for ``metrics/*.json``.
- :class:`TransferTally`: the pseudo instances of semantic knowledge transfer (the
  ``pseudo_labels`` stage); :func:`exported_label_metrics`: the pseudo-label file of the
  ``export_coco`` stage.

The AP metrics are in percent. ``gt`` is a COCO instances path, dict or ``COCO`` object;
``results`` a path or a list of COCO result entries (see :mod:`bestie.coco`).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bestie.coco import encode_masks, load_coco_gt, load_results, rle_areas, segmentation_to_rle
from bestie.errors import BestieError

__all__ = [
    "VOC_IOU_THRESHOLDS",
    "interpolated_average_precision",
    "voc_instance_ap_per_class",
    "voc_instance_map",
    "coco_mask_ap",
    "evaluate_instances",
    "match_at_iou",
    "TransferTally",
    "exported_label_metrics",
]

VOC_IOU_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)

CocoGroundTruth = str | os.PathLike | dict | COCO
Results = str | os.PathLike | list[dict]


def _load(gt: CocoGroundTruth, results: Results) -> tuple[COCO, list[dict]]:
    coco_gt = load_coco_gt(gt)
    if not coco_gt.dataset["annotations"]:
        raise BestieError("ground truth: no instances to evaluate against")
    return coco_gt, load_results(results, coco_gt)


# --------------------------------------------------------------------------- VOC


def interpolated_average_precision(hits: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP (VOC 2010+) of a ranked list of predictions.

    Args:
        hits: bool [N], true positive flags in descending score order.
        num_gt: ground-truth instances of the class (> 0).
    Returns:
        sum_i (r_i - r_{i-1}) * p_i, where p_i is the precision made monotonically
        non-increasing from the right (max precision at any recall >= r_i). 0.0 if N == 0.
    """
    true_positives = np.cumsum(hits, dtype=np.float64)  # [N]
    recall = true_positives / num_gt
    precision = true_positives / np.arange(1, len(hits) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _match_image(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy matching of one image's predictions, for all thresholds at once.

    Args:
        iou: float [P, G], rows in descending score order; -1 where classes differ.
        thresholds: float [T].
    Returns:
        hits: bool [P, T]; prediction p is a hit at threshold t if the unmatched ground
        truth with the highest IoU has IoU >= t, and that ground truth becomes matched.
    """
    num_preds, num_gt = iou.shape
    levels = np.arange(len(thresholds))
    matched = np.zeros((len(thresholds), num_gt), dtype=bool)  # [T, G]
    hits = np.zeros((num_preds, len(thresholds)), dtype=bool)
    for p in range(num_preds):  # sequential by nature: each match changes the next candidates
        candidates = np.where(matched | (iou[p] < thresholds[:, None]), -1.0, iou[p])  # [T, G]
        best = candidates.argmax(axis=1)  # [T]
        hit = candidates[levels, best] >= 0
        matched[levels[hit], best[hit]] = True
        hits[p] = hit
    return hits


def voc_instance_ap_per_class(
    gt: CocoGroundTruth, results: Results, iou_thresholds: Sequence[float] = VOC_IOU_THRESHOLDS
) -> dict[float, np.ndarray]:
    """Classic VOC / SDS instance mask AP per class, in percent.

    Per class, the predictions of all images are ranked by score (descending; equal
    scores keep their order in ``results``, as MATLAB's stable ``sort`` in the VOC devkit
    does). Walking down the ranking, a prediction is a true positive if its mask IoU with
    the best *not yet matched* ground-truth instance of its class in the same image is
    >= the threshold, and that instance becomes matched; otherwise it is a false positive
    (so duplicates of a found object are false positives). This follows docs/method.md's
    "a not-yet-matched ground-truth instance"; the VOC devkit instead takes the highest-IoU
    instance overall and counts a false positive if it is already taken — the two differ
    only when one prediction overlaps two instances of its class by >= the threshold.

    AP is the all-point interpolated area under precision/recall (:func:`interpolated_average_precision`).
    IoU is the plain mask IoU: the COCO ground truth carries no void (255) pixels, so
    unlike the SDS code void pixels are not excluded from predictions. ``iscrowd``
    regions are no ground truth here (VOC has none; COCO AP ignores what matches them).

    Args:
        iou_thresholds: T thresholds in (0, 1].
    Returns:
        {threshold: AP float [C]} with C = number of categories in ``gt``, ordered by
        category id (index c = class c with our ids). NaN for classes without ground truth;
        0 for classes with ground truth but no true positive.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)  # [T]
    if not len(thresholds) or ((thresholds <= 0) | (thresholds > 1)).any():
        raise BestieError(f"iou_thresholds: need values in (0, 1], got {list(iou_thresholds)}")
    coco_gt, predictions = _load(gt, results)

    category_ids = sorted(coco_gt.cats)
    class_of = {category_id: c for c, category_id in enumerate(category_ids)}
    gt_classes = [class_of[a["category_id"]] for a in coco_gt.dataset["annotations"] if not a.get("iscrowd")]
    num_gt = np.bincount(gt_classes, minlength=len(category_ids))  # [C]

    scores = np.array([p["score"] for p in predictions], dtype=np.float64)  # [D]
    pred_classes = np.array([class_of[p["category_id"]] for p in predictions], dtype=np.int64)  # [D]
    ranking = np.argsort(-scores, kind="stable")  # [D] global rank -> prediction index

    # Matching never crosses images, so each image can be matched on its own as long as
    # its predictions are visited in the global ranking order.
    ranked_by_image: dict[int, list[int]] = defaultdict(list)
    for index in ranking:
        ranked_by_image[predictions[index]["image_id"]].append(int(index))

    hits = np.zeros((len(predictions), len(thresholds)), dtype=bool)  # [D, T]
    for image_id, pred_indices in ranked_by_image.items():
        annotations = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd")]
        if not annotations:
            continue
        height, width = coco_gt.imgs[image_id]["height"], coco_gt.imgs[image_id]["width"]
        gt_rles = [segmentation_to_rle(a["segmentation"], height, width) for a in annotations]
        pred_rles = [predictions[i]["segmentation"] for i in pred_indices]
        iou = mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))  # [P, G], plain IoU (no crowd)
        image_gt_classes = np.array([class_of[a["category_id"]] for a in annotations])  # [G]
        same_class = pred_classes[pred_indices][:, None] == image_gt_classes  # [P, G]
        hits[pred_indices] = _match_image(np.where(same_class, iou, -1.0), thresholds)

    ap = np.full((len(thresholds), len(category_ids)), np.nan)  # [T, C]
    for c in np.flatnonzero(num_gt):
        ranked = ranking[pred_classes[ranking] == c]
        ap[:, c] = [interpolated_average_precision(hits[ranked, t], int(num_gt[c])) for t in range(len(thresholds))]
    return {float(t): 100.0 * ap[k] for k, t in enumerate(thresholds)}


def voc_instance_map(
    gt: CocoGroundTruth, results: Results, iou_thresholds: Sequence[float] = VOC_IOU_THRESHOLDS
) -> dict[str, float]:
    """VOC instance mAP in percent: {"voc_map25": ..., "voc_map50": ..., ...}.

    The mean of :func:`voc_instance_ap_per_class` over the classes that have ground
    truth (a class with ground truth and no prediction counts as 0; a class without
    ground truth is left out whatever it predicts). Key = ``voc_map`` + round(100 t).
    """
    per_class = voc_instance_ap_per_class(gt, results, iou_thresholds)
    return {f"voc_map{round(100 * t)}": float(np.nanmean(ap)) for t, ap in per_class.items()}


# --------------------------------------------------------------------------- COCO


def _results_to_coco(coco_gt: COCO, predictions: list[dict]) -> COCO:
    """Results -> COCO object, like ``COCO.loadRes`` but silent and with mask areas."""
    rles = [p["segmentation"] for p in predictions]
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles)
    coco = COCO()
    coco.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": [
            {**p, "id": i + 1, "area": float(areas[i]), "bbox": boxes[i].tolist(), "iscrowd": 0}
            for i, p in enumerate(predictions)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_mask_ap(gt: CocoGroundTruth, results: Results) -> dict[str, float]:
    """COCO mask AP (IoU .50:.95), AP50, AP75 in percent: {"coco_ap", "coco_ap50", "coco_ap75"}.

    pycocotools' COCOeval(iouType="segm") with its defaults (100 detections per image,
    crowd instances ignored); its printing is swallowed. No results -> zeros.
    """
    coco_gt, predictions = _load(gt, results)
    if not predictions:
        return {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0}
    evaluator = COCOeval(coco_gt, _results_to_coco(coco_gt, predictions), iouType="segm")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 when nothing is evaluable (e.g. only crowd ground truth).
    ap, ap50, ap75 = (100.0 * max(float(s), 0.0) for s in evaluator.stats[:3])
    return {"coco_ap": ap, "coco_ap50": ap50, "coco_ap75": ap75}


def evaluate_instances(gt: CocoGroundTruth, results: Results, decimals: int = 4) -> dict[str, float]:
    """All instance metrics (VOC mAP25/50/70/75, COCO AP/AP50/AP75) in percent, rounded."""
    coco_gt = load_coco_gt(gt)
    predictions = load_results(results, coco_gt)
    metrics = {**voc_instance_map(coco_gt, predictions), **coco_mask_ap(coco_gt, predictions)}
    return {key: round(float(value), decimals) for key, value in metrics.items()}


# --------------------------------------------------------------------------- pseudo labels


def match_at_iou(
    pred_masks: np.ndarray, pred_classes: np.ndarray, gt_masks: np.ndarray, gt_classes: np.ndarray, iou: float = 0.5
) -> int:
    """Number of one-to-one matches of same-class instances with mask IoU >= ``iou``.

    At IoU > 0.5 a match is unique on both sides, so counting the pairs above the
    threshold is exact; below it, a greedy best-first assignment is used.

    Args:
        pred_masks: bool [P, H, W]; pred_classes: [P]; gt_masks: bool [G, H, W]; gt_classes: [G].
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


@dataclass
class TransferTally:
    """Pseudo-instance quality of semantic knowledge transfer, accumulated one image at a time
    (so memory does not grow with the split).

    :meth:`add` takes an image's :class:`bestie.structures.PseudoLabel` (accepted instances:
    ``instance_map`` [H, W], 0 none, k instance k; ``classes`` [N]; the ``rejected_no_point`` /
    ``rejected_multi_point`` counts) and its ground truth (an object with ``masks`` [N, H, W] and
    ``classes`` [N]), or None where the image has no masks. :meth:`metrics`: precision and recall of
    pseudo instances at mask IoU 0.5 on the images with ground truth (recall is the share of
    ground-truth instances accepted as a pseudo instance), and the rejected components split
    into "no point" and "two or more points".
    """

    images: int = 0
    accepted_instances: int = 0
    measured_instances: int = 0  # accepted on images with ground truth
    matched: int = 0
    ground_truth_instances: int = 0
    no_point: int = 0
    multi_point: int = 0

    def add(self, result: Any, gt: Any | None) -> None:
        self.images += 1
        self.accepted_instances += result.num_instances
        self.no_point += result.rejected_no_point
        self.multi_point += result.rejected_multi_point
        if gt is None:
            return
        masks = result.instance_map[None] == np.arange(1, result.num_instances + 1)[:, None, None]
        self.measured_instances += result.num_instances
        self.ground_truth_instances += len(gt.classes)
        self.matched += match_at_iou(masks, result.classes, gt.masks, gt.classes)

    def metrics(self) -> dict[str, float]:
        rejected = self.no_point + self.multi_point
        return {
            "images": self.images,
            "accepted_instances": self.accepted_instances,
            "precision50": 100.0 * self.matched / max(self.measured_instances, 1),
            "recall50": 100.0 * self.matched / max(self.ground_truth_instances, 1),
            "rejected_components": rejected,
            "rejected_no_point": self.no_point,
            "rejected_multi_point": self.multi_point,
            "rejected_multi_point_share": 100.0 * self.multi_point / max(rejected, 1),
        }


def exported_label_metrics(coco: dict, train_gt: dict) -> dict[str, float]:
    """Counts of an exported pseudo-label file, and its instance metrics against the masks.

    Args:
        coco: the COCO instances dict of pseudo labels (annotations with ``score``).
        train_gt: COCO ground truth of the training images that have masks.
    Returns:
        ``images``, ``images_with_instances``, ``instances``, ``instances_per_image``; and, if
        ``train_gt`` has instances, ``train_<key>`` for each :func:`evaluate_instances` key,
        measured on the pseudo labels of the images in ``train_gt``.
    """
    images, annotations = coco["images"], coco["annotations"]
    annotated = {a["image_id"] for a in annotations}
    stats = {
        "images": len(images),
        "images_with_instances": len(annotated),
        "instances": len(annotations),
        "instances_per_image": round(len(annotations) / max(1, len(images)), 4),
    }
    measured = {image["id"] for image in train_gt["images"]}
    if train_gt["annotations"]:
        results = [
            {k: a[k] for k in ("image_id", "category_id", "segmentation", "score")}
            for a in annotations if a["image_id"] in measured
        ]
        stats |= {f"train_{k}": v for k, v in evaluate_instances(train_gt, results).items()}
    return stats
