from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bestie.coco import build_coco, encode_masks, masks_to_annotations
from bestie.errors import BestieError
from bestie.structures import GroundTruth
from bestie.metrics.instances import (
    coco_mask_ap,
    evaluate_instances,
    exported_label_metrics,
    interpolated_average_precision,
    match_at_iou,
    TransferTally,
    voc_instance_ap_per_class,
    voc_instance_map,
)
from bestie.structures import PseudoLabel

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
    rle = encode_masks(mask[None])[0]
    return {"image_id": image_id, "category_id": cls + 1, "segmentation": rle, "score": score}


# --------------------------------------------------------------------------- average precision


def test_average_precision_all_point_interpolation():
    # 3 GT; ranking TP FP FP TP TP: recall 1/3 1/3 1/3 2/3 1, precision 1 .5 .33 .5 .6.
    # Interpolated precision 1 .6 .6 .6 .6 -> AP = 1/3 * 1 + 1/3 * .6 + 1/3 * .6 = 0.7333.
    # (11-point VOC2007 would give 0.7455, un-interpolated 0.7.)
    hits = np.array([1, 0, 0, 1, 1], dtype=bool)
    assert interpolated_average_precision(hits, 3) == pytest.approx(2.2 / 3)
    assert interpolated_average_precision(np.zeros(0, bool), 3) == 0.0
    assert interpolated_average_precision(np.array([1, 1], bool), 4) == pytest.approx(0.5)  # recall stops at 0.5


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


# --------------------------------------------------------------------------- pseudo labels


def test_match_at_iou_one_to_one_same_class():
    big_a = box((0, 5), (0, 5))  # IoU with A: 20 / 25
    # Two predictions on A: only one can match; the one on B has the wrong class.
    preds = np.stack([big_a, A, B])
    assert match_at_iou(preds, np.array([0, 0, 1]), np.stack([A, B]), np.array([0, 0])) == 1
    assert match_at_iou(preds, np.array([0, 0, 0]), np.stack([A, B]), np.array([0, 0])) == 2
    assert match_at_iou(preds[:1], np.array([0]), A[None], np.array([0]), iou=0.9) == 0
    assert match_at_iou(np.zeros((0, *SHAPE), bool), np.zeros(0, int), A[None], np.array([0])) == 0


def test_match_at_iou_below_one_half_matches_each_instance_once():
    left, right = box((0, 4), (0, 6)), box((0, 4), (4, 10))
    # IoU: left-A 20/24, left-wide 16/40, right-A 4/40, right-wide 24/32.
    gt = np.stack([A, box((0, 4), (2, 10))])
    assert match_at_iou(np.stack([left, right]), np.array([0, 0]), gt, np.array([0, 0]), iou=0.3) == 2
    assert match_at_iou(np.stack([left, left]), np.array([0, 0]), gt, np.array([0, 0]), iou=0.3) == 2
    assert match_at_iou(np.stack([left, left]), np.array([0, 0]), gt, np.array([0, 0]), iou=0.5) == 1


def transfer(instance_map: np.ndarray, classes: list[int], no_point: int = 0, multi_point: int = 0):
    return PseudoLabel(instance_map.astype(np.int32), np.array(classes, dtype=np.int64),
                       np.zeros((len(classes), 2), np.float32), no_point, multi_point)


def test_transfer_metrics_hand_worked():
    # Image a: instance 1 = A (a hit), instance 2 = C with the wrong class; image b: no ground truth.
    results = {
        "a": transfer(A * 1 + C * 2, [0, 0], no_point=1, multi_point=2),
        "b": transfer(B * 1, [1], multi_point=1),
    }
    truth = {"a": GroundTruth(masks=np.stack([A, C]), classes=np.array([0, 1]))}
    tally = TransferTally()
    for name, result in results.items():
        tally.add(result, truth.get(name))
    assert tally.metrics() == {
        "images": 2,
        "accepted_instances": 3,
        "precision50": 50.0,  # 1 of the 2 instances of the measured image
        "recall50": 50.0,
        "rejected_components": 4,
        "rejected_no_point": 1,
        "rejected_multi_point": 3,
        "rejected_multi_point_share": 75.0,
    }


def test_exported_label_metrics_counts_and_measures_only_images_with_masks():
    truth = make_gt({1: [(0, A)], 2: []})
    coco = make_gt({1: [(0, A)], 3: [(1, B), (1, C)]})
    for annotation in coco["annotations"]:
        annotation["score"] = 0.5
    coco["images"].append({"id": 4, "file_name": "4.jpg", "height": 10, "width": 10})
    metrics = exported_label_metrics(coco, truth)
    assert {k: metrics[k] for k in ("images", "images_with_instances", "instances", "instances_per_image")} == {
        "images": 3, "images_with_instances": 2, "instances": 3, "instances_per_image": 1.0,
    }
    assert metrics["train_voc_map50"] == 100.0 and metrics["train_coco_ap"] == 100.0  # image 3 is not measured
    assert set(exported_label_metrics(coco, make_gt({1: []}))) == {
        "images", "images_with_instances", "instances", "instances_per_image"
    }
