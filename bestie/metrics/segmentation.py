"""Semantic label maps against ground truth: pixel confusion, per-class IoU, mIoU.

Label maps are ``[H, W]`` integer tensors: 0 background, c + 1 class c, 255 ignore (in a
prediction: unsure; in the ground truth: void).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bestie.structures import IGNORE

__all__ = ["SemanticMapTally", "confusion_matrix", "iou_per_class", "mean_iou", "wsss_confusions", "wsss_metrics"]


def confusion_matrix(prediction: Tensor, target: Tensor, num_labels: int) -> Tensor:
    """Pixel counts ``[num_labels, num_labels]`` (rows: ground truth, columns: prediction).

    Pixels that are 255 on *either* side are left out: ground-truth void, and pixels the
    prediction marks as ignore (report the share of those separately).

    Args:
        prediction, target: ``[H, W]`` integer label maps (0..num_labels-1 or 255).
    """
    keep = (prediction != IGNORE) & (target != IGNORE)
    index = target[keep].long() * num_labels + prediction[keep].long()
    return torch.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def iou_per_class(confusion: Tensor) -> Tensor:
    """``[L]`` float64 IoU of each label from a confusion matrix; NaN where a label is
    neither in the ground truth nor predicted."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    return hits / (confusion.sum(dim=0) + confusion.sum(dim=1) - hits)


def mean_iou(confusion: Tensor) -> float:
    """mIoU in percent over the labels in the ground truth or the prediction."""
    return 100 * iou_per_class(confusion).nanmean().item()


def wsss_confusions(raw: Tensor | None, refined: Tensor, target: Tensor, num_labels: int) -> Tensor:
    """One image's WSSS maps scored three ways, to be summed over images.

    Args:
        raw: ``[H, W]`` the CAM threshold map, or None (maps read, not computed: no CAM);
        refined: ``[H, W]`` the refined map (255 unsure); target: ``[H, W]`` the ground truth.
    Returns:
        ``[3, L, L]`` int64 confusion matrices (:func:`confusion_matrix`) of the raw map (zeros
        without one), the refined map without its ignore pixels, and the refined map with them
        as background.
    """
    raw_confusion = (
        confusion_matrix(raw, target, num_labels) if raw is not None
        else torch.zeros(num_labels, num_labels, dtype=torch.int64)
    )
    return torch.stack([
        raw_confusion,
        confusion_matrix(refined, target, num_labels),
        confusion_matrix(refined.masked_fill(refined == IGNORE, 0), target, num_labels),
    ])


def wsss_metrics(
    confusions: Tensor,
    class_names: Sequence[str],
    num_images: int,
    num_evaluated: int,
    ignored_pixels: int,
    total_pixels: int,
    raw_cam: bool = True,
) -> dict[str, float]:
    """The ``wsss`` stage's metrics: mIoU of the maps and the refined map's IoU per label.

    Args:
        confusions: ``[3, L, L]``, :func:`wsss_confusions` summed over the evaluated images.
        class_names: the L - 1 foreground classes.
        num_images, num_evaluated: maps written, and of those scored against masks.
        ignored_pixels, total_pixels: the refined maps' 255 pixels, and all their pixels.
        raw_cam: whether there were raw CAM maps (False: maps read from files).
    Returns:
        ``num_images``, ``num_evaluated``, ``ignore_share`` (a fraction, 4 decimals) and, if
        any image was evaluated, ``miou``, ``miou_raw_cam`` (with ``raw_cam``),
        ``miou_ignore_as_background`` and ``iou_<label>`` in percent (2 decimals).
    """
    metrics = {"num_images": num_images, "num_evaluated": num_evaluated,
               "ignore_share": round(ignored_pixels / max(total_pixels, 1), 4)}
    if num_evaluated:
        raw, refined, ignore_as_background = confusions
        iou = iou_per_class(refined)
        metrics.update(
            miou=round(mean_iou(refined), 2),
            **({"miou_raw_cam": round(mean_iou(raw), 2)} if raw_cam else {}),
            miou_ignore_as_background=round(mean_iou(ignore_as_background), 2),
            **{f"iou_{name}": round(100 * v, 2) for name, v in zip(("background", *class_names), iou.tolist())},
        )
    return metrics


class SemanticMapTally:
    """Semantic maps scored one image at a time, for :func:`wsss_metrics` at the end."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.confusions = torch.zeros(3, num_labels, num_labels, dtype=torch.int64)
        self.images = self.evaluated = self.ignored = self.total = 0

    def add(self, refined: Tensor, truth: Tensor | None = None, raw: Tensor | None = None) -> None:
        """One image's ``[H, W]`` map (255 unsure), scored when its ground truth is given
        (``raw``: its CAM threshold map, as :func:`wsss_confusions`)."""
        self.images += 1
        self.ignored += int((refined == IGNORE).sum())
        self.total += refined.numel()
        if truth is not None:
            self.confusions += wsss_confusions(raw, refined, truth, self.num_labels)
            self.evaluated += 1

    def metrics(self, class_names: Sequence[str], raw_cam: bool = True) -> dict[str, float]:
        return wsss_metrics(self.confusions, class_names, self.images, self.evaluated, self.ignored, self.total,
                            raw_cam=raw_cam)
