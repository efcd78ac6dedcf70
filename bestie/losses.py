"""The three BESTIE losses (docs/method.md §5) and the criterion that applies them with online
self-refinement (§6).

- segmentation: cross-entropy against the WSSS map (255 ignored) with hard-pixel mining;
- center: squared error against the class-wise center heatmap, counted on weighted pixels;
- offset: absolute error against the offset map, counted the same way.

The weight map is the "instance-aware guidance": 0 outside accepted instances, so the
center and offset terms learn only where a pseudo label exists.

:class:`BestieCriterion` adds the refined labels of self-refinement; :class:`BestieTraining`
puts network and criterion together as the model :func:`bestie.training.train` trains.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bestie.refine import refine_image_level, refine_point_level, refine_semantic
from bestie.runtime import autocast
from bestie.structures import IGNORE

__all__ = [
    "hard_pixel_cross_entropy", "weighted_mse", "weighted_l1", "compute_losses", "self_refine",
    "BestieCriterion", "BestieTraining",
]


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


def compute_losses(
    outputs: dict, batch: dict, refined: dict | None, *,
    seg_weight: float, center_weight: float, offset_weight: float, hard_pixel_ratio: float,
) -> dict:
    """The weighted BESTIE losses of one batch (docs/method.md §5).

    With refined labels, a center/offset term is the mean of its pseudo-label term and its
    refined-label term; point supervision refines only the offset (``refined`` then has no
    ``"center"``). The segmentation term likewise, when ``refined`` has a ``"semantic"`` target.

    Returns:
        {"loss": total, "seg": ..., "center": ..., "offset": ...} scalars (the terms unweighted).
    """
    seg = hard_pixel_cross_entropy(outputs["seg"], batch["semantic"], hard_pixel_ratio)
    if refined is not None and "semantic" in refined:
        seg = 0.5 * (seg + hard_pixel_cross_entropy(outputs["seg"], refined["semantic"], hard_pixel_ratio))
    center = weighted_mse(outputs["center"], batch["center"], batch["center_weight"])
    offset = weighted_l1(outputs["offset"], batch["offset"], batch["weight"])
    if refined is not None:
        if "center" in refined:
            center = 0.5 * (center + weighted_mse(outputs["center"], refined["center"], refined["weight"]))
        offset = 0.5 * (offset + weighted_l1(outputs["offset"], refined["offset"], refined["weight"]))
    total = seg_weight * seg + center_weight * center + offset_weight * offset
    return {"loss": total, "seg": seg, "center": center, "offset": offset}


@torch.no_grad()
def self_refine(
    outputs: dict, batch: dict, supervision: str, num_classes: int, *,
    threshold: float, nms_kernel: int, max_instances: int, sigma: float,
) -> dict | None:
    """Refined labels from the network's own detached outputs (docs/method.md §6), or None for ``full``.

    ``threshold``, ``nms_kernel``, ``max_instances`` and ``sigma`` apply to image-level (cls)
    refinement; point-level refinement groups around the given points.
    """
    if supervision == "cls":
        return refine_image_level(
            outputs["center"].detach().float(),
            outputs["offset"].detach().float(),
            outputs["seg"].detach().float().softmax(dim=1),
            batch["component_map"],
            batch["component_class"],
            num_classes,
            threshold=threshold,
            nms_kernel=nms_kernel,
            max_instances=max_instances,
            sigma=sigma,
        )
    if supervision == "point":
        return refine_point_level(
            outputs["offset"].detach().float(),
            batch["semantic"],
            batch["points"],
            batch["point_classes"],
            num_classes,
        )
    return None


class BestieCriterion(nn.Module):
    """The weighted BESTIE losses, with the labels refined from the outputs from ``refine_from`` on.

    ``forward(outputs, batch, iteration)`` returns :func:`compute_losses`'s terms and
    ``refine_ms``, the time refinement took (0.0 when it did not run). ``refine_from`` None
    (refinement off) or ``full`` supervision never refines. ``seg_refine`` (keyword arguments
    of :func:`bestie.refine.refine_semantic`; None: off) adds a refined semantic target to the
    refined labels from iteration ``seg_refine_from`` on (``batch["image"]`` is its guide).
    """

    def __init__(
        self, supervision: str, num_classes: int, *, seg_weight: float, center_weight: float,
        offset_weight: float, hard_pixel_ratio: float, refine_from: int | None, refine_thresh: float,
        refine_nms_kernel: int, refine_max_instances: int, sigma: float, seg_refine: dict | None = None,
        seg_refine_from: int = 0,
    ):
        super().__init__()
        self.supervision, self.num_classes = supervision, num_classes
        self.weights = dict(seg_weight=seg_weight, center_weight=center_weight, offset_weight=offset_weight,
                            hard_pixel_ratio=hard_pixel_ratio)
        self.refine_from = refine_from if supervision != "full" else None
        self.refinement = dict(threshold=refine_thresh, nms_kernel=refine_nms_kernel,
                               max_instances=refine_max_instances, sigma=sigma)
        self.seg_refine, self.seg_refine_from = seg_refine, seg_refine_from

    def forward(self, outputs: dict, batch: dict, iteration: int) -> dict:
        refined, refine_ms = None, 0.0
        if self.refine_from is not None and iteration >= self.refine_from:
            tic = time.perf_counter()
            refined = self_refine(outputs, batch, self.supervision, self.num_classes, **self.refinement)
            if self.seg_refine is not None and iteration >= self.seg_refine_from:
                refined["semantic"] = refine_semantic(batch["image"], outputs["seg"].detach(), batch["semantic"],
                                                      **self.seg_refine)
            refine_ms = 1000 * (time.perf_counter() - tic)
        return {**compute_losses(outputs, batch, refined, **self.weights), "refine_ms": refine_ms}


class BestieTraining(nn.Module):
    """A BESTIE network and its criterion as :func:`bestie.training.train` trains them.

    ``forward(batch, iteration)``: the network's outputs on ``batch["image"]`` (under the
    loop's autocast), cast to float32, then the criterion outside autocast.
    """

    def __init__(self, network: nn.Module, criterion: BestieCriterion):
        super().__init__()
        self.network, self.criterion = network, criterion

    def forward(self, batch: dict, iteration: int) -> dict:
        outputs = self.network(batch["image"])
        with autocast(batch["image"].device, enabled=False):
            return self.criterion({k: v.float() for k, v in outputs.items()}, batch, iteration)
