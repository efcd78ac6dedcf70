"""Evaluating any instance segmenter on a split: COCO predictions, metrics and a gallery.

The ``evaluate`` (BESTIE) and ``maskrcnn`` stages differ only in how one image is predicted,
so both hand a ``predict(image, record) -> Instances`` callable to :func:`predict_split` and
write the same files with :func:`write_evaluation`::

    OUT/predictions.json     COCO results (RLE masks, scores)
    OUT/<record>.json        what the caller records beside them (the evaluate stage: its settings)
    METRICS                  the metrics of bestie.metrics.instances.evaluate_instances
    GALLERY/<name>.png       image | prediction | ground truth, for the first images
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bestie.coco import masks_to_results
from bestie.data.manifest import ImageRecord
from bestie.io import atomic_dir, read_image, write_json, write_metrics
from bestie.metrics.instances import evaluate_instances
from bestie.structures import GroundTruth, Instances
from bestie.visualize import overlay_instances, panels

__all__ = ["Predictor", "SplitPredictions", "predict_split", "write_evaluation"]

Predictor = Callable[[np.ndarray, ImageRecord], Instances]  # ([H, W, 3] uint8, record) -> Instances


@dataclass
class SplitPredictions:
    results: list[dict] = field(default_factory=list)  # COCO result entries
    gallery: dict[str, np.ndarray] = field(default_factory=dict)  # image name -> [h, w, 3] uint8 panel


def predict_split(
    predict: Predictor,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    ground_truth: Mapping[int, GroundTruth],
    gallery_size: int = 0,
    desc: str = "evaluate",
) -> SplitPredictions:
    """Run ``predict`` on every image of ``records``; draw the first ``gallery_size`` of them
    beside their ``ground_truth`` (by image id). Results carry the dataset's ``category_ids``."""
    out = SplitPredictions()
    for record in tqdm(records, desc=desc, disable=None):
        image = read_image(record.path)
        instances = predict(image, record)
        out.results += masks_to_results(
            instances.masks, instances.classes, instances.scores, record.image_id, category_ids
        )
        if len(out.gallery) < gallery_size:
            gt = ground_truth[record.image_id]
            out.gallery[record.name] = panels(
                [image,
                 overlay_instances(image, instances.masks, instances.classes, class_names, instances.scores),
                 overlay_instances(image, gt.masks, gt.classes, class_names)],
                ["image", "prediction", "ground truth"],
            )
    return out


def write_evaluation(
    predictions: SplitPredictions,
    gt_path: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    gallery_dir: str | os.PathLike,
    records: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Write ``out_dir/predictions.json``, the gallery PNGs and the metrics against ``gt_path``;
    return the metrics. Every output is written atomically.

    ``records`` maps file names to JSON-able values written beside the predictions (e.g. the
    settings they were made with).
    """
    with atomic_dir(out_dir, replace=True) as tmp:
        write_json(Path(tmp) / "predictions.json", predictions.results, indent=None)
        for name, value in (records or {}).items():
            write_json(Path(tmp) / name, value)
    with atomic_dir(gallery_dir, replace=True) as tmp:
        for name, picture in predictions.gallery.items():
            Image.fromarray(picture).save(Path(tmp) / f"{name}.png")
    metrics = evaluate_instances(gt_path, predictions.results)
    write_metrics(metrics_path, metrics)
    return metrics
