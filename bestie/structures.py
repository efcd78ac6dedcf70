"""The types the steps of the method hand each other, and the label value they share.

Label maps (ground-truth class and object maps, WSSS maps, augmented maps) are integer
``[H, W]`` arrays: 0 background, c + 1 class c (or k object k), and :data:`IGNORE` where a
pixel has no label: void in the ground truth, unsure in a WSSS map, padding after
augmentation. Losses and metrics leave those pixels out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IGNORE", "GroundTruth", "Instances", "PseudoLabel"]

IGNORE = 255


@dataclass(frozen=True)
class GroundTruth:
    """The ground-truth instances of one image."""

    masks: np.ndarray  # [N, H, W] bool
    classes: np.ndarray  # [N] int64, 0-based

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Instances:
    """The predicted instances of one image, sorted by score (descending)."""

    masks: np.ndarray  # [N, H, W] bool, at the original image size
    classes: np.ndarray  # [N] int64, 0-based
    scores: np.ndarray  # [N] float32

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, eq=False)
class PseudoLabel:
    """The pseudo instances of one training image: the components semantic knowledge
    transfer accepted (docs/method.md §3), or the ground-truth objects.

    Attributes:
        instance_map: [H, W] integer; 0 = no accepted instance, k = instance k (1-based).
            int32 as transfer makes it, uint8 as the ``pseudo_labels`` stage stores it.
        classes: [N] int64; class index of instance k at position k - 1.
        centers: [N, 2] float32 (x, y) center of each instance.
        rejected_no_point: components >= ``min_size`` without a point of their class.
        rejected_multi_point: components >= ``min_size`` with two or more points of their
            class. Both counts are 0 for stored labels, which do not keep them.
    """

    instance_map: np.ndarray
    classes: np.ndarray
    centers: np.ndarray
    rejected_no_point: int = 0
    rejected_multi_point: int = 0

    @property
    def num_instances(self) -> int:
        return len(self.classes)
