"""Which predicted training-set instances become pseudo labels (bestie.pseudo_export)."""

from __future__ import annotations

import numpy as np
import pytest

from bestie.pseudo_export import presence_threshold, select_pseudo_labels


def test_presence_threshold_is_where_found_classes_match_the_labels() -> None:
    # Labelled classes score 0.2 and 0.15; the unlabelled one 0.1: any threshold in (0.1, 0.15]
    # finds exactly the labels, and the highest score reaching that F1 is 0.15.
    scores = np.array([[0.2, 0.1], [0.15, 0.0]])
    labels = np.array([[True, False], [True, False]])
    assert presence_threshold(scores, labels) == (pytest.approx(0.15), pytest.approx(1.0))


def test_presence_threshold_follows_the_scale_of_the_scores() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random((50, 4)) < 0.4
    scores = np.where(labels, rng.uniform(0.5, 1.0, labels.shape), rng.uniform(0.0, 0.4, labels.shape))
    high, f1 = presence_threshold(scores, labels)
    low, low_f1 = presence_threshold(scores / 10, labels)
    assert f1 == low_f1 == pytest.approx(1.0)
    assert 0.4 < high <= 1.0 and low == pytest.approx(high / 10)


def test_presence_threshold_trades_misses_against_false_classes() -> None:
    # Ten labelled classes at 0.5, one at 0.05; an unlabelled class at 0.1. Down to 0.05 the
    # threshold gains one labelled class and one false one: F1 20/21 at 0.5, 22/23 at 0.05.
    scores = np.array([[0.5] * 10 + [0.05, 0.1]])
    labels = np.array([[True] * 11 + [False]])
    threshold, f1 = presence_threshold(scores, labels)
    assert threshold == pytest.approx(0.05) and f1 == pytest.approx(22 / 23)


def test_presence_threshold_without_instances() -> None:
    assert presence_threshold(np.zeros((3, 2)), np.ones((3, 2), dtype=bool)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        presence_threshold(np.zeros((3, 2)), np.ones((2, 3), dtype=bool))


def _coco(annotations: list[tuple[int, int, float]]) -> dict:
    """A COCO dict of two images and categories 7 and 9; annotations (image id, category id, score)."""
    return {
        "info": {"description": "test"},
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [{"id": n, "image_id": i, "category_id": c, "score": s}
                        for n, (i, c, s) in enumerate(annotations, start=1)],
    }


def _kept(coco: dict) -> list[tuple[int, int, float]]:
    return [(a["image_id"], a["category_id"], a["score"]) for a in coco["annotations"]]


PREDICTED = _coco([(1, 7, 0.9), (1, 9, 0.05), (2, 9, 0.2), (2, 9, 0.01)])
LABELS = {1: [7], 2: [9]}


def test_a_fixed_threshold_keeps_the_instances_scoring_at_least_it() -> None:
    kept, stats = select_pseudo_labels(PREDICTED, LABELS, score_thresh=0.2, label_filter=False)
    assert _kept(kept) == [(1, 7, 0.9), (2, 9, 0.2)]
    assert [a["id"] for a in kept["annotations"]] == [1, 2]
    assert kept["images"] == PREDICTED["images"] and kept["categories"] == PREDICTED["categories"]
    assert stats == {"score_thresh": 0.2, "label_presence_f1": pytest.approx(100.0)}


def test_the_label_filter_drops_classes_the_image_is_not_labelled_with() -> None:
    kept, stats = select_pseudo_labels(PREDICTED, LABELS, score_thresh=0.0, label_filter=True)
    assert _kept(kept) == [(1, 7, 0.9), (2, 9, 0.2), (2, 9, 0.01)]
    # The F1 is of the classes found before the filter: image 1 also shows class 9.
    assert stats["label_presence_f1"] == pytest.approx(100 * 4 / 5)


def test_the_threshold_from_labels_is_the_presence_threshold() -> None:
    kept, stats = select_pseudo_labels(PREDICTED, LABELS, score_thresh=None, label_filter=False)
    assert stats == {"score_thresh": pytest.approx(0.2), "label_presence_f1": pytest.approx(100.0)}
    assert _kept(kept) == [(1, 7, 0.9), (2, 9, 0.2)]
    assert PREDICTED["annotations"][1]["id"] == 2  # the input is not changed


def test_selecting_from_no_predictions() -> None:
    kept, stats = select_pseudo_labels(_coco([]), LABELS, score_thresh=None, label_filter=True)
    assert kept["annotations"] == [] and stats == {"score_thresh": 0.0, "label_presence_f1": 0.0}
