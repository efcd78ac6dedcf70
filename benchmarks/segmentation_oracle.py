"""How much of a trained BESTIE model's error is its semantic segmentation?

    python benchmarks/segmentation_oracle.py [--checkpoint data/models/bestie.pt]

Runs the model on the val split three times, changing only the segmentation that
post-processing groups (the center and offset heads are the model's own each time):

- predicted: the segmentation head's logits, as inference without refinement;
- refined: the same after ``inference.seg_refine`` (what the ``evaluate`` stage does);
- ground truth: the val class map (an oracle; void pixels keep the predicted logits).

and prints, for each, the segmentation's mIoU against ground truth (void left out) and the
instance metrics, then the IoU of each class of the model's own segmentations. Reads the
thresholds from ``params.yaml``. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from bestie.coco import masks_to_results
from bestie.config import SegRefineParams, load_params
from bestie.data.manifest import class_map_path, load_manifest
from bestie.data.png import read_label_png
from bestie.inference import load_bestie, network_outputs, refine_segmentation
from bestie.io import read_image, read_json
from bestie.metrics.instances import evaluate_instances
from bestie.metrics.segmentation import confusion_matrix, iou_per_class
from bestie.postprocess import postprocess
from bestie.runtime import select_device
from bestie.structures import IGNORE

ORACLE_LOGIT = 20.0  # one-hot logits: softmax probability ~1 for the true class


def ground_truth_logits(class_map: np.ndarray, predicted: torch.Tensor) -> torch.Tensor:
    """[C+1, H, W] logits that put the ground-truth class first; void pixels keep ``predicted``."""
    labels = torch.from_numpy(class_map.astype(np.int64)).to(predicted.device)
    known = labels != IGNORE
    one_hot = F.one_hot(labels.clamp(max=len(predicted) - 1), len(predicted)).permute(2, 0, 1)
    return torch.where(known, ORACLE_LOGIT * one_hot.to(predicted.dtype), predicted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="data/models/bestie.pt")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--val-gt", default="data/eval/val_gt.json")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    params = load_params(args.params)
    options = params.inference
    # The "refined" row shows what refinement would give even when params turn it off.
    refine = options.seg_refine if options.seg_refine.iterations else SegRefineParams()
    manifest = load_manifest(f"{args.prepared}/manifest.json")
    val_gt = read_json(args.val_gt)  # before the long inference: a missing file stops it at once
    device = select_device(args.device)
    model, _ = load_bestie(args.checkpoint, device, class_names=manifest.class_names)
    num_labels = manifest.num_classes + 1
    variants = ("predicted", "refined", "ground truth")
    results = {name: [] for name in variants}
    confusion = {name: torch.zeros(num_labels, num_labels, dtype=torch.long) for name in variants}

    for record in manifest.val:
        image = read_image(record.path)
        class_map = read_label_png(class_map_path(args.prepared, "val", record.name))
        normalized, seg, center, offset = network_outputs(model, image, device, options.flip)
        segmentations = {
            "predicted": seg,
            "refined": refine_segmentation(
                normalized, seg, iterations=refine.iterations, texture_window=refine.texture_window,
                stride=refine.stride, dilations=refine.dilations,
            ),
            "ground truth": ground_truth_logits(class_map, seg),
        }
        target = torch.from_numpy(class_map.astype(np.int64))
        for name, logits in segmentations.items():
            confusion[name] += confusion_matrix(logits.argmax(dim=0).cpu(), target, num_labels)
            instances = postprocess(
                logits, center, offset, image_size=image.shape[:2], min_size=options.min_size,
                center_threshold=options.center_thresh, nms_kernel=options.nms_kernel,
            )
            results[name] += masks_to_results(
                instances.masks, instances.classes, instances.scores, record.image_id, manifest.category_ids
            )

    print(f"{args.checkpoint} on {len(manifest.val)} val images; refinement: {refine.iterations} PAMR iterations\n")
    print("| segmentation | mIoU | voc_map25 | voc_map50 | voc_map70 | coco_ap |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        metrics = evaluate_instances(val_gt, results[name])
        miou = 100 * float(iou_per_class(confusion[name]).nanmean())
        row = " | ".join(f"{metrics[k]:.1f}" for k in ("voc_map25", "voc_map50", "voc_map70", "coco_ap"))
        print(f"| {name} | {miou:.1f} | {row} |")
    # Which classes the model's segmentation loses (the ground-truth row is 100 by construction).
    labels = ["background", *manifest.class_names]
    print("\n| segmentation | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name in variants[:2]:
        print(f"| {name} | " + " | ".join(f"{100 * iou:.1f}" for iou in iou_per_class(confusion[name]).tolist()) + " |")


if __name__ == "__main__":
    main()
