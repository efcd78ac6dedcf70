"""Which of BESTIE's instances on the training images become Mask R-CNN's pseudo labels (the
``export_coco`` stage, docs/method.md §8).

An instance's score (its center's heat times its mean class probability) has no fixed scale:
a network that learned a dataset less well scores every instance lower, and a threshold chosen
on one dataset can drop nearly all of another's instances. The image-level labels, which every
supervision has, say which classes each training image holds; the threshold at which the
classes BESTIE finds agree best with them calibrates the scores on the dataset itself, without
a mask. The same labels also rule out every instance of a class the image does not hold.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

__all__ = ["presence_threshold", "select_pseudo_labels"]


def presence_threshold(class_scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The score threshold at which "image i holds class c" read from the instances agrees best
    with the image-level labels.

    Args:
        class_scores: [I, C] float, the highest score of an instance of class c in image i;
            0 where the image has none.
        labels: [I, C] bool, the image-level labels.
    Returns:
        ``(threshold, f1)``: of the positive scores, the ``t`` that maximises the F1 of
        ``class_scores >= t`` against ``labels`` (the highest such ``t`` on ties), and that F1.
        ``(0.0, 0.0)`` when no instance has a positive score.
    """
    if class_scores.shape != labels.shape:
        raise ValueError(f"class_scores {class_scores.shape} and labels {labels.shape} differ in shape")
    candidates = np.unique(class_scores[class_scores > 0])  # ascending
    if candidates.size == 0:
        return 0.0, 0.0
    labelled = np.sort(class_scores[labels])
    unlabelled = np.sort(class_scores[~labels])
    true_pos = labelled.size - np.searchsorted(labelled, candidates, side="left")
    false_pos = unlabelled.size - np.searchsorted(unlabelled, candidates, side="left")
    false_neg = labelled.size - true_pos
    f1 = 2 * true_pos / np.maximum(2 * true_pos + false_pos + false_neg, 1)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best]), float(f1[best])


def select_pseudo_labels(
    coco: dict, labels: Mapping[int, Collection[int]], score_thresh: float | None, label_filter: bool
) -> tuple[dict, dict[str, float]]:
    """Keep the pseudo labels of a COCO instances dict of scored predictions.

    Args:
        coco: every predicted instance of the training images (annotations with ``score``).
        labels: image id -> the category ids of its image-level labels.
        score_thresh: keep instances scoring at least this; None: at least the
            :func:`presence_threshold` of these instances and labels.
        label_filter: drop the instances of a category the image is not labelled with.
    Returns:
        ``(kept, stats)``: ``coco`` with the kept annotations only, ids renumbered 1, 2, ...;
        ``stats``: ``score_thresh``, the threshold applied, and ``label_presence_f1``, the F1 of
        the classes found at that threshold against the image-level labels.
    """
    image_row = {image["id"]: row for row, image in enumerate(coco["images"])}
    category_column = {category["id"]: column for column, category in enumerate(coco["categories"])}
    label_matrix = np.zeros((len(image_row), len(category_column)), dtype=bool)
    for image_id, category_ids in labels.items():
        label_matrix[image_row[image_id], [category_column[c] for c in category_ids]] = True

    annotations = coco["annotations"]
    rows = np.array([image_row[a["image_id"]] for a in annotations], dtype=np.int64)
    columns = np.array([category_column[a["category_id"]] for a in annotations], dtype=np.int64)
    scores = np.array([a["score"] for a in annotations], dtype=np.float64)
    class_scores = np.zeros(label_matrix.shape)
    np.maximum.at(class_scores, (rows, columns), scores)

    threshold = presence_threshold(class_scores, label_matrix)[0] if score_thresh is None else score_thresh
    keep = scores >= threshold
    found = np.zeros_like(label_matrix)  # [I, C]: the image has a kept instance of the class
    found[rows[keep], columns[keep]] = True
    f1 = 2 * int((found & label_matrix).sum()) / max(1, int(found.sum()) + int(label_matrix.sum()))
    if label_filter:
        keep &= label_matrix[rows, columns]
    kept = [dict(a, id=number) for number, a in enumerate((a for a, k in zip(annotations, keep) if k), start=1)]
    return dict(coco, annotations=kept), {"score_thresh": float(threshold), "label_presence_f1": 100 * f1}
