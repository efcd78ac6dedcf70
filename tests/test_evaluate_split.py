"""The evaluation loop shared by the `evaluate` and `maskrcnn` stages, on the real VOC image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bestie.coco import ground_truth_by_image
from bestie.data.manifest import load_manifest
from bestie.data.prepare import prepare_dataset
from bestie.data.sources.voc import VOCSource
from bestie.evaluate_split import predict_split, write_evaluation
from bestie.io import environment_versions
from bestie.structures import Instances

METRIC_KEYS = {"voc_map25", "voc_map50", "voc_map70", "voc_map75", "coco_ap", "coco_ap50", "coco_ap75"}


@pytest.fixture
def val(tmp_path, voc_fixture_root):
    gt_path = tmp_path / "val_gt.json"
    prepare_dataset(VOCSource(voc_fixture_root, {"train": "train", "val": "val"}), tmp_path / "prepared", gt_path)
    manifest = load_manifest(tmp_path / "prepared/manifest.json")
    return manifest, ground_truth_by_image(json.loads(gt_path.read_text())), gt_path


def test_ground_truth_as_predictions_scores_100(tmp_path, val):
    manifest, ground_truth, gt_path = val
    seen = []

    def predict(image, record):
        seen.append((image.shape, record.name))
        gt = ground_truth[record.image_id]
        return Instances(gt.masks, gt.classes, np.ones(len(gt), dtype=np.float32))

    predictions = predict_split(
        predict, manifest.val, manifest.class_names, manifest.category_ids, ground_truth, gallery_size=1
    )
    (record,) = manifest.val
    assert seen == [((375, 500, 3), record.name)]
    assert [r["image_id"] for r in predictions.results] == [record.image_id] * 2
    assert predictions.gallery[record.name].shape == (12 + 375, 3 * 500 + 2 * 4, 3)  # title row, 3 panels

    metrics = write_evaluation(
        predictions, gt_path, out_dir=tmp_path / "eval", metrics_path=tmp_path / "metrics.json",
        gallery_dir=tmp_path / "gallery",
    )
    assert set(metrics) == METRIC_KEYS and metrics["voc_map50"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {**metrics, "environment": environment_versions()}
    assert json.loads((tmp_path / "eval/predictions.json").read_text()) == predictions.results
    assert Image.open(tmp_path / f"gallery/{record.name}.png").size == (3 * 500 + 2 * 4, 12 + 375)


def test_no_gallery_and_no_instances(tmp_path, val):
    manifest, ground_truth, gt_path = val

    def predict(image, record):
        return Instances(np.zeros((0, *image.shape[:2]), dtype=bool), np.zeros(0, np.int64), np.zeros(0, np.float32))

    predictions = predict_split(predict, manifest.val, manifest.class_names, manifest.category_ids, ground_truth)
    assert predictions.results == [] and predictions.gallery == {}
    metrics = write_evaluation(
        predictions, gt_path, out_dir=tmp_path / "eval", metrics_path=tmp_path / "metrics.json",
        gallery_dir=tmp_path / "gallery",
    )
    assert metrics["voc_map50"] == 0.0
    assert list((tmp_path / "gallery").iterdir()) == []
