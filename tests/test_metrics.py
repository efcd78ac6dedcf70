"""The quality figures of classification, peaks and semantic maps (instance masks: test_metrics_instances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bestie.structures import GroundTruth
from bestie.metrics.classification import classification_metrics, multilabel_average_precision
from bestie.metrics.peaks import peak_statistics
from bestie.metrics.segmentation import (
    SemanticMapTally, confusion_matrix, iou_per_class, mean_iou, wsss_confusions, wsss_metrics,
)

# --------------------------------------------------------------------------- classification


def test_multilabel_average_precision_hand_worked():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.4], [0.7, 0.3, 0.1], [0.6, 0.4, 0.2]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    ap = multilabel_average_precision(scores, targets)
    # class 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: no positives; class 2: all hits.
    assert ap[0].item() == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(ap[1].item())
    assert ap[2].item() == pytest.approx(1.0)


def test_classification_metrics_hand_worked():
    logits = torch.tensor([[2.0, -1.0], [1.0, 1.0], [-1.0, -2.0], [-0.5, 3.0]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]])
    metrics = classification_metrics(logits, targets)
    # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 2 -> F1 1. Pooled: tp 3, fp 1, fn 1.
    assert metrics["cls_f1_macro"] == pytest.approx(75.0)
    assert metrics["cls_f1_micro"] == pytest.approx(100 * 6 / 8)
    # AP class 0: ranks 2.0 (hit), 1.0, -0.5, -1.0 (hit) -> (1 + 2/4) / 2; class 1: perfect.
    assert metrics["cls_map"] == pytest.approx(100 * (0.75 + 1.0) / 2)


# --------------------------------------------------------------------------- peaks


def ground_truth() -> GroundTruth:
    """10 x 10: two class-0 instances side by side on top, one class-1 instance below."""
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, :5, :5] = masks[1, :5, 5:] = masks[2, 5:, :] = True
    return GroundTruth(masks=masks, classes=np.array([0, 0, 1]))


def test_peak_statistics_hand_worked():
    peaks = np.array(
        [
            [1, 1, 0, 0.9],  # instance 0
            [3, 3, 0, 0.8],  # instance 0 again: it has two peaks
            [7, 2, 0, 0.9],  # instance 1
            [2, 7, 0, 0.9],  # on instance 2, but the wrong class: a miss
            [6, 6, 1, 0.5],  # below pseudo_thresh
            [5, 8, 1, 0.7],  # at pseudo_thresh: not kept (strictly above)
        ],
        dtype=np.float32,
    )
    empty = GroundTruth(masks=np.zeros((0, 4, 4), bool), classes=np.zeros(0, np.int64))
    stats = peak_statistics([peaks, np.zeros((0, 4), np.float32)], [ground_truth(), empty], 0.7)
    assert stats == {
        "peak_precision": 0.75,
        "instances_one_peak": pytest.approx(1 / 3),
        "instances_no_peak": pytest.approx(1 / 3),
        "instances_multi_peak": pytest.approx(1 / 3),
        "num_images": 2,
        "num_instances": 3,
        "num_peaks": 6,
        "num_kept_peaks": 4,
    }


def test_peak_statistics_of_nothing_is_zero():
    stats = peak_statistics([], [], 0.7)
    assert stats["peak_precision"] == stats["instances_one_peak"] == 0.0
    with pytest.raises(ValueError):
        peak_statistics([np.zeros((0, 4))], [], 0.7)


# --------------------------------------------------------------------------- semantic maps


def test_confusion_leaves_out_ignore_on_either_side() -> None:
    truth = torch.tensor([[0, 1, 1, 255], [2, 2, 0, 1]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 255, 1], [2, 1, 0, 1]], dtype=torch.uint8)
    confusion = confusion_matrix(pred, truth, 3)
    assert confusion.sum() == 6  # one ignore in the prediction, one void in the truth
    assert confusion.tolist() == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    iou = iou_per_class(confusion)
    assert iou.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert mean_iou(confusion) == pytest.approx(100 * (1 + 2 / 3 + 0.5) / 3)
    assert torch.isnan(iou_per_class(torch.zeros(2, 2, dtype=torch.long))).all()


def test_wsss_confusions_score_raw_refined_and_ignore_as_background() -> None:
    truth = torch.tensor([[0, 1, 1, 255], [2, 2, 0, 1]], dtype=torch.uint8)
    raw = torch.tensor([[1, 1, 1, 1], [2, 2, 0, 0]], dtype=torch.uint8)
    refined = torch.tensor([[0, 1, 255, 1], [2, 1, 255, 1]], dtype=torch.uint8)
    raw_confusion, refined_confusion, background_confusion = wsss_confusions(raw, refined, truth, 3)
    assert torch.equal(raw_confusion, confusion_matrix(raw, truth, 3))
    assert torch.equal(refined_confusion, confusion_matrix(refined, truth, 3))
    assert background_confusion.tolist() == [[2, 0, 0], [1, 2, 0], [0, 1, 1]]  # the ignored pixels as 0


def test_wsss_metrics_hand_worked() -> None:
    confusions = torch.stack([
        torch.tensor([[2, 2], [0, 4]]),  # raw: IoU 1/2, 2/3
        torch.tensor([[3, 0], [1, 2]]),  # refined: IoU 3/4, 2/3
        torch.tensor([[3, 0], [2, 2]]),  # ignore as background: IoU 3/5, 1/2
    ])
    metrics = wsss_metrics(confusions, ["cat"], num_images=3, num_evaluated=2, ignored_pixels=1, total_pixels=7)
    assert metrics == {
        "num_images": 3, "num_evaluated": 2, "ignore_share": 0.1429,
        "miou": 70.83, "miou_raw_cam": 58.33, "miou_ignore_as_background": 55.0,
        "iou_background": 75.0, "iou_cat": 66.67,
    }
    assert list(metrics) == [  # the order of the metrics file
        "num_images", "num_evaluated", "ignore_share", "miou", "miou_raw_cam", "miou_ignore_as_background",
        "iou_background", "iou_cat",
    ]
    assert wsss_metrics(torch.zeros(3, 2, 2, dtype=torch.int64), ["cat"], 3, 0, 0, 0) == {
        "num_images": 3, "num_evaluated": 0, "ignore_share": 0.0,
    }


def test_semantic_map_tally_sums_images_as_the_stages_did() -> None:
    truth = torch.tensor([[0, 1], [1, 0]])
    scored = torch.tensor([[0, 1], [255, 0]])
    unscored = torch.tensor([[255, 255], [1, 1]])
    tally = SemanticMapTally(num_labels=2)
    tally.add(scored, truth)
    tally.add(unscored)  # no ground truth: counts for the ignore share only
    expected = wsss_metrics(wsss_confusions(None, scored, truth, 2), ["a"], num_images=2, num_evaluated=1,
                            ignored_pixels=3, total_pixels=8, raw_cam=False)
    assert tally.metrics(["a"], raw_cam=False) == expected
    assert expected["ignore_share"] == 0.375 and expected["num_evaluated"] == 1
