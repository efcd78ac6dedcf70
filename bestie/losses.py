"""The three BESTIE losses (docs/method.md §5) and the criterion that applies them with online
self-refinement (§6).

- segmentation: cross-entropy against the WSSS map (255 ignored) with hard-pixel mining;
- center: squared error against the class-wise center heatmap, counted on weighted pixels;
- offset: absolute error against the offset map, counted the same way.

Optionally (``train.pairwise``, not in the paper) a boundary-aware segmentation term,
:func:`pairwise_affinity_loss`: neighbouring pixels that look alike should share a label.

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

from bestie.edge_refine import mean_pool, neighbour_offsets, pamr_affinity, texture_guide
from bestie.refine import refine_image_level, refine_point_level, refine_semantic
from bestie.runtime import autocast
from bestie.structures import IGNORE

__all__ = [
    "hard_pixel_cross_entropy", "weighted_mse", "weighted_l1", "pairwise_affinity", "pairwise_affinity_loss",
    "unsure_pixels", "compute_losses", "self_refine", "BestieCriterion", "BestieTraining",
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


@torch.no_grad()
def pairwise_affinity(images: Tensor, *, texture_window: int, stride: int, dilations: list[int]) -> Tensor:
    """How alike each pixel looks to each of its neighbours, on a grid ``stride`` times coarser:
    the weights of the ``wsss`` stage's PAMR (:func:`bestie.edge_refine.pamr_affinity` on the
    :func:`bestie.edge_refine.texture_guide` average-pooled by the stride, as
    :func:`bestie.edge_refine.refine_scores` does), so the pairwise loss and the refinements
    agree on where the edges are.

    Args:
        images: [B, 3, H, W] float.
    Returns:
        [B, P, ceil(H / stride), ceil(W / stride)] float32, P = 8 ``len(dilations)`` neighbours
        in :func:`bestie.edge_refine.neighbour_offsets` order; over P a pixel's weights sum to 1.
    """
    weights = []
    for image in images.float():
        guide = texture_guide(image, texture_window)
        if stride > 1:
            guide = mean_pool(guide, stride)
        height, width = guide.shape[-2:]
        weights.append(pamr_affinity(guide, dilations).t().reshape(-1, height, width))
    return torch.stack(weights)


def pairwise_affinity_loss(
    seg_logits: Tensor, affinity: Tensor, *, stride: int, dilations: list[int], pixels: Tensor | None = None,
) -> Tensor:
    """Boundary-aware segmentation loss: each pixel's label should agree with the neighbours it
    looks like, so the label changes where the image does.

    A pairwise term in the manner of BoxInst's (Tian et al., CVPR 2021): with ``p`` the class
    probabilities average-pooled by ``stride`` and ``j`` each neighbour of pixel ``i`` at the
    offsets :func:`bestie.edge_refine.neighbour_offsets` gives (in coarse pixels), weighted by
    the affinity ``w_ij``::

        - sum_ij w_ij log P(i and j share a label),  P = sum_k p_i(k) p_j(k)

    divided by the sum of the weights, over every pixel ``i`` or, given ``pixels``, over those
    it marks (each pair is visited from both ends, so that is every pair touching a marked
    pixel). Pairs reaching outside the image are not counted.

    Args:
        seg_logits: [B, K, H, W] segmentation logits.
        affinity: [B, P, ceil(H / stride), ceil(W / stride)] (:func:`pairwise_affinity` of the
            same stride and dilations).
        pixels: optional [B, ceil(H / stride), ceil(W / stride)] bool, the pixels ``i`` counted.
    Returns:
        scalar (0 with a graph when no pair is counted).
    """
    probs = seg_logits.float().softmax(dim=1)
    if stride > 1:
        probs = F.avg_pool2d(probs, stride, ceil_mode=True)
    offsets = neighbour_offsets(dilations)
    if affinity.shape[1] != len(offsets) or affinity.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"affinity {tuple(affinity.shape)} does not match {len(offsets)} neighbours "
                         f"of {tuple(probs.shape[-2:])} pixels")
    height, width = probs.shape[-2:]
    total = probs.new_zeros(())
    total_weight = probs.new_zeros(())
    for p, (dy, dx) in enumerate(offsets):
        # Pixels i whose neighbour i + (dy, dx) lies inside the image, and those neighbours.
        rows_i, cols_i = slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx))
        rows_j, cols_j = slice(max(0, dy), height + min(0, dy)), slice(max(0, dx), width + min(0, dx))
        same = (probs[..., rows_i, cols_i] * probs[..., rows_j, cols_j]).sum(dim=1)
        weight = affinity[:, p, rows_i, cols_i]
        if pixels is not None:
            weight = weight * pixels[:, rows_i, cols_i]
        total = total - (weight * same.clamp_min(1e-6).log()).sum()
        total_weight = total_weight + weight.sum()
    return total / total_weight.clamp_min(1e-6)


def unsure_pixels(target: Tensor, stride: int) -> Tensor:
    """[B, H, W] long target (``IGNORE`` where unknown) -> [B, ceil(H / stride), ceil(W / stride)]
    bool: the grid cells holding an unknown pixel."""
    unsure = (target == IGNORE).float().unsqueeze(1)
    if stride > 1:
        unsure = F.max_pool2d(unsure, stride, ceil_mode=True)
    return unsure[:, 0].bool()


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
    ``pairwise`` (the keyword arguments of :func:`pairwise_affinity`, the term's ``weight`` and
    ``pixels``: ``"all"``, or ``"unsure"`` for the pixels the segmentation target leaves unknown,
    crop padding included; None: off) adds :func:`pairwise_affinity_loss` to the loss, as the term ``"pairwise"``.
    ``late_hard_pixel_ratio`` (None: off) replaces ``hard_pixel_ratio`` from iteration
    ``late_hard_pixel_iter`` on.
    """

    def __init__(
        self, supervision: str, num_classes: int, *, seg_weight: float, center_weight: float,
        offset_weight: float, hard_pixel_ratio: float, refine_from: int | None, refine_thresh: float,
        refine_nms_kernel: int, refine_max_instances: int, sigma: float, seg_refine: dict | None = None,
        seg_refine_from: int = 0, pairwise: dict | None = None, late_hard_pixel_ratio: float | None = None,
        late_hard_pixel_iter: int = 0,
    ):
        super().__init__()
        self.supervision, self.num_classes = supervision, num_classes
        self.weights = dict(seg_weight=seg_weight, center_weight=center_weight, offset_weight=offset_weight)
        self.hard_pixel_ratio = hard_pixel_ratio
        self.late_hard_pixel_ratio, self.late_hard_pixel_iter = late_hard_pixel_ratio, late_hard_pixel_iter
        self.refine_from = refine_from if supervision != "full" else None
        self.refinement = dict(threshold=refine_thresh, nms_kernel=refine_nms_kernel,
                               max_instances=refine_max_instances, sigma=sigma)
        self.seg_refine, self.seg_refine_from = seg_refine, seg_refine_from
        self.pairwise = pairwise

    def forward(self, outputs: dict, batch: dict, iteration: int) -> dict:
        refined, refine_ms = None, 0.0
        if self.refine_from is not None and iteration >= self.refine_from:
            tic = time.perf_counter()
            refined = self_refine(outputs, batch, self.supervision, self.num_classes, **self.refinement)
            if self.seg_refine is not None and iteration >= self.seg_refine_from:
                refined["semantic"] = refine_semantic(batch["image"], outputs["seg"].detach(), batch["semantic"],
                                                      **self.seg_refine)
            refine_ms = 1000 * (time.perf_counter() - tic)
        losses = compute_losses(outputs, batch, refined, hard_pixel_ratio=self.hard_pixel_ratio_at(iteration),
                                **self.weights)
        if self.pairwise is not None:
            grid = dict(stride=self.pairwise["stride"], dilations=self.pairwise["dilations"])
            affinity = pairwise_affinity(batch["image"], texture_window=self.pairwise["texture_window"], **grid)
            pixels = unsure_pixels(batch["semantic"], grid["stride"]) if self.pairwise["pixels"] == "unsure" else None
            losses["pairwise"] = pairwise_affinity_loss(outputs["seg"], affinity, pixels=pixels, **grid)
            losses["loss"] = losses["loss"] + self.pairwise["weight"] * losses["pairwise"]
        return {**losses, "refine_ms": refine_ms}

    def hard_pixel_ratio_at(self, iteration: int) -> float:
        """The share of the hardest pixels the segmentation loss keeps at ``iteration``."""
        if self.late_hard_pixel_ratio is not None and iteration >= self.late_hard_pixel_iter:
            return self.late_hard_pixel_ratio
        return self.hard_pixel_ratio


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
