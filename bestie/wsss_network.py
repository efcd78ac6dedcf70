"""The seed's second WSSS step (docs/method.md §2): a segmentation network trained on the refined
CAM maps, whose predictions are the semantic maps used downstream.

- :class:`SegmentationTraining`: network + loss as :func:`bestie.training.train` trains them;
  the loss is the cross-entropy against the maps with their unsure pixels (255) ignored
  (:func:`bestie.losses.hard_pixel_cross_entropy`; ``hard_pixel_ratio`` 1 is the plain mean);
- :func:`predict_semantic_map`: one image's map, restricted to its image-level classes
  (:func:`restrict_to_classes`, :func:`confident_labels`: also for any network's segmentation logits).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bestie.losses import hard_pixel_cross_entropy
from bestie.runtime import autocast
from bestie.structures import IGNORE

__all__ = ["SegmentationTraining", "confident_labels", "predict_semantic_map", "restrict_to_classes"]


class SegmentationTraining(nn.Module):
    """``forward(batch, iteration)``: ``{"loss": cross-entropy of network(batch["image"])["seg"]
    against batch["semantic"]}`` ([B, H, W] long, 255 ignored), the loss in float32 outside autocast."""

    def __init__(self, network: nn.Module, hard_pixel_ratio: float = 1.0):
        super().__init__()
        self.network, self.hard_pixel_ratio = network, hard_pixel_ratio

    def forward(self, batch: dict, iteration: int) -> dict:
        logits = self.network(batch["image"])["seg"]
        with autocast(batch["image"].device, enabled=False):
            return {"loss": hard_pixel_cross_entropy(logits.float(), batch["semantic"], self.hard_pixel_ratio)}


def restrict_to_classes(logits: Tensor, classes: Tensor) -> Tensor:
    """``logits`` [..., C+1, H, W] with every class but the background and ``classes`` ([K] int64,
    0-based) at -inf: their softmax probability is 0."""
    allowed = torch.zeros(logits.shape[-3], dtype=torch.bool, device=logits.device)
    allowed[0] = True
    allowed[classes + 1] = True
    return logits.masked_fill(~allowed.view(-1, 1, 1), float("-inf"))


def confident_labels(probs: Tensor, min_confidence: float) -> Tensor:
    """[C+1, H, W] class probabilities -> [H, W] uint8 map: the winning label (0 background, c+1
    class c), 255 where its probability is below ``min_confidence``."""
    confidence, labels = probs.max(dim=0)
    return labels.masked_fill(confidence < min_confidence, IGNORE).to(torch.uint8)


@torch.no_grad()
def predict_semantic_map(
    network: nn.Module, image: Tensor, classes: Tensor, *, flip: bool, min_confidence: float
) -> Tensor:
    """One image's semantic map from an eval-mode network.

    Args:
        image: [3, H, W] normalised, on the network's device.
        classes: [K] int64, the image's classes (0-based); the others are never predicted.
        flip: average the softmax of the image and (mirrored back) of its mirror image.
        min_confidence: pixels whose winning probability is below it become 255.
    Returns:
        [H, W] uint8: 0 background, c+1 class c, 255 unsure.
    """
    images = torch.stack([image, image.flip(-1)]) if flip else image[None]
    probs = restrict_to_classes(network(images)["seg"].float(), classes).softmax(dim=1)  # [1 or 2, C+1, H, W]
    probs = 0.5 * (probs[0] + probs[1].flip(-1)) if flip else probs[0]
    return confident_labels(probs, min_confidence)
