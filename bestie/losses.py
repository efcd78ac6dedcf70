"""The three BESTIE losses (METHOD.md §5).

- segmentation: cross-entropy against the WSSS map (255 ignored) with hard-pixel mining;
- center: squared error against the class-wise center heatmap, counted on weighted pixels;
- offset: absolute error against the offset map, counted the same way.

The weight map is the "instance-aware guidance": 0 outside accepted instances, so the
center and offset terms learn only where a pseudo label exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bestie.structures import IGNORE

__all__ = ["hard_pixel_cross_entropy", "weighted_mse", "weighted_l1"]


def hard_pixel_cross_entropy(logits: Tensor, target: Tensor, top_ratio: float = 0.2) -> Tensor:
    """Mean of the largest ``top_ratio`` share of per-pixel cross-entropies.

    Args:
        logits: [B, K, H, W].
        target: [B, H, W] long, ``IGNORE`` (255) where unknown.
        top_ratio: share of valid pixels kept (1.0 = plain mean over valid pixels).

    Returns:
        scalar; 0 (with a graph) when no pixel is valid.
    """
    pixel_losses = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    pixel_losses = pixel_losses[target != IGNORE]
    if pixel_losses.numel() == 0:
        return logits.sum() * 0.0
    top_k = max(1, int(round(top_ratio * pixel_losses.numel())))
    if top_k < pixel_losses.numel():
        pixel_losses = pixel_losses.topk(top_k, sorted=False).values
    return pixel_losses.mean()


def _weighted_mean(pixel_losses: Tensor, weight: Tensor) -> Tensor:
    """Sum of ``pixel_losses * weight`` over pixels (and channels) / sum of the pixel weights."""
    total_weight = weight.sum()
    weighted = (pixel_losses * weight).sum()
    # No weighted pixel in the batch: a zero that keeps the graph (DDP needs every grad).
    return torch.where(total_weight > 0, weighted / total_weight.clamp_min(1e-6), weighted * 0.0)


def weighted_mse(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Center loss. prediction, target: [B, C, H, W]; weight: [B, 1, H, W].

    Squared errors are summed over the class channels of each pixel, then averaged over the
    weighted pixels.
    """
    return _weighted_mean((prediction - target).pow(2), weight)


def weighted_l1(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Offset loss. prediction, target: [B, 2, H, W]; weight: [B, 1, H, W].

    Absolute errors of dy and dx are summed per pixel, then averaged over weighted pixels.
    """
    return _weighted_mean((prediction - target).abs(), weight)
