from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bestie.coco import build_coco, encode_mask, masks_to_annotations
from bestie.errors import BestieError
from bestie.evaluation import (
    average_precision,
    coco_mask_ap,
    evaluate_instances,
    voc_instance_ap_per_class,
    voc_instance_map,
)

SHAPE = (10, 10)
VOC_KEYS = ("voc_map25", "voc_map50", "voc_map70", "voc_map75")
COCO_KEYS = ("coco_ap", "coco_ap50", "coco_ap75")


def box(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# Disjoint 10x10 objects.
A = box((0, 4), (0, 5))  # 20 px
B = box((5, 9), (0, 5))  # 20 px
C = box((0, 4), (6, 10))  # 16 px


def make_gt(instances: dict[int, list[tuple[int, np.ndarray]]], num_classes: int = 2) -> dict:
    """{image_id: [(class, mask), ...]} -> COCO dict of 10x10 images."""
    images, annotations = [], []
    for image_id, objects in instances.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": SHAPE[0], "width": SHAPE[1]})
        if objects:
            classes, masks = zip(*objects)
            annotations += masks_to_annotations(
                np.stack(masks), np.array(classes), None, image_id, start_id=len(annotations) + 1
            )
    return build_coco(images, annotations, [f"class{c}" for c in range(num_classes)])


def pred(image_id: int, cls: int, mask: np.ndarray, score: float) -> dict:
    return {"image_id": image_id, "category_id": cls + 1, "segmentation": encode_mask(mask), "score": score}


# --------------------------------------------------------------------------- average precision


def test_average_precision_all_point_interpolation():
    # 3 GT; ranking TP FP FP TP TP: recall 1/3 1/3 1/3 2/3 1, precision 1 .5 .33 .5 .6.
    # Interpolated precision 1 .6 .6 .6 .6 -> AP = 1/3 * 1 + 1/3 * .6 + 1/3 * .6 = 0.7333.
    # (11-point VOC2007 would give 0.7455, un-interpolated 0.7.)
    hits = np.array([1, 0, 0, 1, 1], dtype=bool)
    assert average_precision(hits, 3) == pytest.approx(2.2 / 3)
    assert average_precision(np.zeros(0, bool), 3) == 0.0
    assert average_precision(np.array([1, 1], bool), 4) == pytest.approx(0.5)  # recall stops at 0.5


# --------------------------------------------------------------------------- VOC mAP


def test_perfect_predictions_give_100_everywhere():
    gt = make_gt({1: [(0, A), (1, B)], 2: [(0, C)]})
    results = [pred(1, 0, A, 0.9), pred(1, 1, B, 0.8), pred(2, 0, C, 0.7)]
    metrics = evaluate_instances(gt, results)
    assert set(metrics) == set(VOC_KEYS + COCO_KEYS)
    assert metrics == {key: 100.0 for key in VOC_KEYS + COCO_KEYS}
    assert all(type(value) is float for value in metrics.values())


def test_duplicate_is_false_positive():
    # Ranking TP (A), FP (duplicate of A), TP (B); 2 GT: AP = 1 * .5 + (2/3) * .5 = 0.8333.
    gt = make_gt({1: [(0, A), (0, B)]}, num_classes=1)
    results = [pred(1, 0, A, 0.9), pred(1, 0, A, 0.8), pred(1, 0, B, 0.7)]
    metrics = voc_instance_map(gt, results)
    for key in VOC_KEYS:
        assert metrics[key] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))


def test_ranking_across_images():
    # Same TP FP TP ranking, but spread over two images; the FP is on an image without GT.
    gt = make_gt({1: [(0, A)], 2: [], 3: [(0, B)]}, num_classes=1)
    results = [pred(3, 0, B, 0.5), pred(2, 0, A, 0.8), pred(1, 0, A, 0.9)]
    assert voc_instance_map(gt, results)["voc_map50"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))


def test_class_without_predictions_scores_zero():
    gt = make_gt({1: [(0, A), (1, B)]})
    per_class = voc_instance_ap_per_class(gt, [pred(1, 0, A, 0.9)])
    np.testing.assert_allclose(per_class[0.5], [100.0, 0.0])
    assert voc_instance_map(gt, [pred(1, 0, A, 0.9)]) == {key: 50.0 for key in VOC_KEYS}


def test_class_without_gt_is_left_out():
    gt = make_gt({1: [(0, A)]}, num_classes=3)
    results = [pred(1, 0, A, 0.9), pred(1, 2, B, 0.95), pred(1, 1, C, 0.3)]
    per_class = voc_instance_ap_per_class(gt, results)
    assert per_class[0.5][0] == 100.0
    assert math.isnan(per_class[0.5][1]) and math.isnan(per_class[0.5][2])
    assert voc_instance_map(gt, results) == {key: 100.0 for key in VOC_KEYS}


def test_wrong_class_does_not_match():
    gt = make_gt({1: [(0, A)]})
    assert voc_instance_map(gt, [pred(1, 1, A, 0.9)]) == {key: 0.0 for key in VOC_KEYS}


def test_iou_between_thresholds():
    gt = make_gt({1: [(0, box((0, 6), (0, 5)))]}, num_classes=1)  # 30 px
    results = [pred(1, 0, box((0, 6), (0, 3)), 0.9)]  # 18 px inside: IoU 0.6
    expected = {"voc_map25": 100.0, "voc_map50": 100.0, "voc_map70": 0.0, "voc_map75": 0.0}
    assert voc_instance_map(gt, results) == expected


def test_iou_equal_to_threshold_is_a_hit():
    gt = make_gt({1: [(0, box((0, 2), (0, 5)))]}, num_classes=1)  # 10 px
    results = [pred(1, 0, box((0, 2), (0, 5)) & ~box((1, 2), (2, 5)), 0.9)]  # 7 px inside: IoU 0.7
    expected = {"voc_map25": 100.0, "voc_map50": 100.0, "voc_map70": 100.0, "voc_map75": 0.0}
    assert voc_instance_map(gt, results) == expected


def test_matches_best_unmatched_instance():
    # The second prediction overlaps A (IoU 20/30, already taken) and B (IoU 10/40 = 0.25).
    # It is matched to B at 0.25 (the devkit's "best overall, FP if taken" would miss it).
    gt = make_gt({1: [(0, A), (0, B)]}, num_classes=1)
    results = [pred(1, 0, A, 0.9), pred(1, 0, A | box((5, 7), (0, 5)), 0.8)]
    metrics = voc_instance_map(gt, results)
    assert metrics["voc_map25"] == 100.0
    assert metrics["voc_map50"] == 50.0  # TP then FP, recall stops at 1/2


@pytest.mark.parametrize("miss_first, expected", [(True, 50.0), (False, 100.0)])
def test_equal_scores_keep_input_order(miss_first, expected):
    gt = make_gt({1: [(0, A)]}, num_classes=1)
    hit, miss = pred(1, 0, A, 0.5), pred(1, 0, C, 0.5)
    results = [miss, hit] if miss_first else [hit, miss]
    assert voc_instance_map(gt, results)["voc_map50"] == expected


def test_custom_thresholds_name_keys():
    gt = make_gt({1: [(0, A)]}, num_classes=1)
    metrics = voc_instance_map(gt, [pred(1, 0, A, 1.0)], iou_thresholds=(0.5, 0.9))
    assert metrics == {"voc_map50": 100.0, "voc_map90": 100.0}
    with pytest.raises(BestieError, match="iou_thresholds"):
        voc_instance_map(gt, [], iou_thresholds=(0.0, 0.5))


# --------------------------------------------------------------------------- edge cases


def test_empty_results_give_zeros():
    gt = make_gt({1: [(0, A)]})
    assert evaluate_instances(gt, []) == {key: 0.0 for key in VOC_KEYS + COCO_KEYS}


def test_gt_without_instances_raises():
    gt = make_gt({1: []})
    with pytest.raises(BestieError, match="no instances"):
        voc_instance_map(gt, [])
    with pytest.raises(BestieError, match="no instances"):
        coco_mask_ap(gt, [])


def test_prediction_on_unknown_image_raises():
    gt = make_gt({1: [(0, A)]})
    with pytest.raises(BestieError, match="image_id 5, not in the ground truth"):
        evaluate_instances(gt, [pred(5, 0, A, 0.9)])


def test_coco_mask_ap_perfect_and_from_files(tmp_path, capsys):
    gt = make_gt({1: [(0, A), (1, B)], 2: [(0, C)]})
    results = [pred(1, 0, A, 0.9), pred(1, 1, B, 0.8), pred(2, 0, C, 0.7)]
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    assert coco_mask_ap(gt_path, results_path) == pytest.approx({key: 100.0 for key in COCO_KEYS})
    assert capsys.readouterr().out == ""


def test_coco_mask_ap_iou_between_thresholds():
    # IoU 0.6 < 0.75: counted at AP50, missed at AP75; AP averages .50:.05:.95 so lies strictly between.
    gt = make_gt({1: [(0, box((0, 6), (0, 5)))]}, num_classes=1)
    metrics = coco_mask_ap(gt, [pred(1, 0, box((0, 6), (0, 3)), 0.9)])
    assert metrics["coco_ap50"] == pytest.approx(100.0) and metrics["coco_ap75"] == 0.0
    assert 0.0 < metrics["coco_ap"] < 100.0
