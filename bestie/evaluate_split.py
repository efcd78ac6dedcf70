"""Any instance segmenter on a split: COCO predictions, metrics and a gallery; or a COCO
instances file of its predictions (:func:`predict_coco`, the ``export_coco`` stage).

The ``evaluate`` (BESTIE) and ``maskrcnn`` stages differ only in how one image is predicted,
so both hand a ``predict(image, record) -> Instances`` callable to :func:`predict_split` and
write the same files with :func:`write_evaluation`::

    OUT/predictions.json     COCO results (RLE masks, scores)
    OUT/<record>.json        what the caller records beside them (the evaluate stage: its settings)
    METRICS                  the metrics of bestie.metrics.instances.evaluate_instances
    GALLERY/<name>.png       image | prediction | ground truth, for the first images

Under ``torchrun`` both shard the images over the processes (:mod:`bestie.distributed`): the
main process gets every image's result, in the split's order, and alone writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from bestie.coco import build_coco, masks_to_annotations, masks_to_results
from bestie.data.manifest import ImageRecord
from bestie.distributed import DistContext, gather_shards, shard
from bestie.io import atomic_dir, read_image, write_json, write_metrics
from bestie.metrics.instances import evaluate_instances
from bestie.structures import GroundTruth, Instances
from bestie.visualize import overlay_instances, panels

__all__ = ["Predictor", "SplitPredictions", "predict_split", "predict_coco", "write_evaluation"]

T = TypeVar("T")

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
    context: DistContext | None = None,
) -> SplitPredictions | None:
    """Run ``predict`` on every image of ``records``; draw the first ``gallery_size`` of them
    beside their ``ground_truth`` (by image id). Results carry the dataset's ``category_ids``.

    With a ``context`` of several processes (``torchrun``) each predicts its part of
    ``records``; the main process returns all the predictions, in ``records`` order, as one
    process would, and the others None.
    """

    def predict_one(index: int) -> tuple[str, list[dict], np.ndarray | None]:
        record = records[index]
        image = read_image(record.path)
        instances = predict(image, record)
        results = masks_to_results(
            instances.masks, instances.classes, instances.scores, record.image_id, category_ids
        )
        if index >= gallery_size:
            return record.name, results, None
        gt = ground_truth[record.image_id]
        return record.name, results, panels(
            [image,
             overlay_instances(image, instances.masks, instances.classes, class_names, instances.scores),
             overlay_instances(image, gt.masks, gt.classes, class_names)],
            ["image", "prediction", "ground truth"],
        )

    merged = _map_sharded(predict_one, len(records), desc, context)
    if merged is None:
        return None
    out = SplitPredictions()
    for name, results, panel in merged:
        out.results += results
        if panel is not None:
            out.gallery[name] = panel
    return out


def predict_coco(
    predict: Predictor,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    min_score: float = 0.0,
    desc: str = "export_coco",
    context: DistContext | None = None,
) -> dict | None:
    """Run ``predict`` on every image of ``records``: a COCO instances dict of the instances
    scoring at least ``min_score`` (scores kept; :func:`bestie.pseudo_export.select_pseudo_labels`
    picks the pseudo labels among them), annotation ids 1, 2, ... in ``records`` order, with the
    dataset's own image and ``category_ids``.

    With a ``context`` of several processes each predicts its part; the main process returns
    the dict one process would, the others None.
    """

    def predict_one(index: int) -> tuple[dict, list[dict]]:
        record = records[index]
        instances = predict(read_image(record.path), record)
        keep = np.flatnonzero(instances.scores >= min_score)
        image = {"id": record.image_id, "file_name": record.file_name, "width": record.width, "height": record.height}
        return image, masks_to_annotations(
            instances.masks[keep], instances.classes[keep], instances.scores[keep], image_id=record.image_id,
            category_ids=category_ids,
        )

    merged = _map_sharded(predict_one, len(records), desc, context)
    if merged is None:
        return None
    annotations = [annotation for _, image_annotations in merged for annotation in image_annotations]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    return build_coco([image for image, _ in merged], annotations, class_names, category_ids)


def _map_sharded(function: Callable[[int], T], count: int, desc: str, context: DistContext | None) -> list[T] | None:
    """``[function(i) for i in range(count)]`` on the main process, each process computing its
    part (:func:`bestie.distributed.shard`); None on the other processes."""
    quiet = context is not None and not context.is_main
    part = shard(range(count), context)
    return gather_shards([function(i) for i in tqdm(part, desc=desc, disable=True if quiet else None)], context)


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
