"""Online self-refinement (docs/method.md §6): refined instance targets from the network's own outputs.

Optionally (``train.seg_self_refine``, not in the paper) a refined semantic target too:
:func:`refine_semantic`, the network's own segmentation snapped to image edges.

Refinement runs the inference grouping (:mod:`bestie.grouping`) on the training batch,
confined to the WSSS components (:func:`bestie.spatial.class_components` of the augmented
WSSS map, computed by the data loader), and renders targets from the instances it finds. It
recovers the objects that semantic knowledge transfer rejected (components holding several
objects), which would otherwise be learnt as background.

Everything is batched: instances get ids numbered across the batch, and the per-image target
renderers of :mod:`bestie.targets` draw the whole batch in one call (class channels of all
images side by side for the heatmap; images stacked along the rows for offsets and weights,
which is exact because an offset depends only on the difference of coordinates).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bestie.edge_refine import refine_scores
from bestie.grouping import instances_at_points, instances_in_components
from bestie.structures import IGNORE
from bestie.targets import center_heatmap, offset_and_weight

__all__ = ["refine_image_level", "refine_point_level", "refine_semantic"]


@torch.no_grad()
def refine_image_level(
    center: Tensor,
    offset: Tensor,
    seg_prob: Tensor,
    component_map: Tensor,
    component_class: Tensor,
    num_classes: int,
    *,
    threshold: float = 0.3,
    nms_kernel: int = 41,
    max_instances: int = 5,
    sigma: float = 6.0,
) -> dict[str, Tensor]:
    """Refined center, offset and weight targets from the predictions (image-level labels).

    Inside each component, the peaks of its class's center map above ``threshold`` split it:
    every pixel joins the nearest peak by its offset vote. Per instance, the center is its
    peak and the weight is the peak value (clipped to 1) x the mean segmentation probability
    of its class over its pixels. A component without a peak is one instance centered at its
    centroid, weighted by that mean probability alone; a component with more than
    ``max_instances`` peaks gets no refined label (weight 0). A peak that no pixel joins
    is dropped.

    Args:
        center: [B, C, H, W] predicted center heatmaps.
        offset: [B, 2, H, W] predicted (dy, dx).
        seg_prob: [B, C+1, H, W] segmentation probabilities (softmax; channel 0 background).
        component_map: [B, H, W] integer; 0 = none, k = WSSS component k of the image.
        component_class: [B, K] long; class of component k at index k - 1, -1 padding.
        num_classes: C.
        threshold, nms_kernel: center peaks exceed ``threshold`` and are the maximum of
            their ``nms_kernel`` window.
        max_instances: components with more peaks are skipped.
        sigma: Gaussian sigma of the rendered centers.

    Returns:
        {"center": [B, C, H, W], "offset": [B, 2, H, W], "weight": [B, 1, H, W]} float32 on
        the inputs' device.
    """
    batch_size, _, height, width = _check_outputs(center, offset, num_classes)
    expected = (batch_size, num_classes + 1, height, width)
    if tuple(seg_prob.shape) != expected:
        raise ValueError(f"seg_prob: expected {expected}, got {tuple(seg_prob.shape)}")
    found = instances_in_components(
        center.detach().float(),
        offset.detach().float(),
        component_map,
        component_class,
        threshold=threshold,
        nms_kernel=nms_kernel,
        max_centers=max_instances,
    )

    # Mean probability of each instance's class over its pixels.
    num_instances = len(found.classes)
    b, y, x = (found.instance_map > 0).nonzero(as_tuple=True)
    owner = found.instance_map[b, y, x] - 1
    prob = seg_prob.detach().float()[b, found.classes[owner] + 1, y, x]
    prob_sum = prob.new_zeros(num_instances).index_add_(0, owner, prob)
    mean_prob = prob_sum / torch.bincount(owner, minlength=num_instances).clamp(min=1)
    center_score = torch.where(found.has_peak, found.center_scores.clamp(max=1.0), 1.0)

    heatmap = center_heatmap(
        found.centers_yx.flip(-1),
        found.batch * num_classes + found.classes,
        batch_size * num_classes,
        (height, width),
        sigma,
    ).view(batch_size, num_classes, height, width)
    offset_target, weight = _render_stacked(
        found.instance_map, found.centers_yx.flip(-1), found.batch, center_score * mean_prob
    )
    return {"center": heatmap, "offset": offset_target, "weight": weight}


@torch.no_grad()
def refine_point_level(
    offset: Tensor,
    semantic_map: Tensor,
    points_xy: Tensor,
    point_classes: Tensor,
    num_classes: int,
) -> dict[str, Tensor]:
    """Refined offset and weight targets from the predicted offsets (point labels).

    Each WSSS-foreground pixel of class c joins the nearest given point of class c in its
    image by its offset vote; its offset target points at that point, with weight 1. Pixels
    of a class without points, background and void get weight 0. The center targets stay
    the given points, so only offsets are refined.

    Args:
        offset: [B, 2, H, W] predicted (dy, dx).
        semantic_map: [B, H, W] integer augmented WSSS map; 0 background, c + 1 class c, 255 void.
        points_xy: [B, P, 2] (x, y) points in the augmented frame (may lie outside it).
        point_classes: [B, P] long class of each point, -1 padding.
        num_classes: C.

    Returns:
        {"offset": [B, 2, H, W], "weight": [B, 1, H, W]} float32 on the inputs' device.
    """
    if offset.dim() != 4 or offset.shape[1] != 2:
        raise ValueError(f"offset: expected [B, 2, H, W], got {tuple(offset.shape)}")
    batch_size, _, height, width = offset.shape
    if tuple(semantic_map.shape) != (batch_size, height, width):
        raise ValueError(
            f"semantic_map: expected {(batch_size, height, width)}, got {tuple(semantic_map.shape)}"
        )
    semantic_map = semantic_map.to(offset.device, torch.long)
    foreground = (semantic_map >= 1) & (semantic_map <= num_classes)
    pixel_class = torch.where(foreground, semantic_map - 1, -1)
    found = instances_at_points(
        offset.detach().float(), pixel_class, points_xy, point_classes, num_classes
    )
    offset_target, weight = _render_stacked(found.instance_map, found.points_xy, found.batch, None)
    return {"offset": offset_target, "weight": weight}


def _render_stacked(
    instance_map: Tensor, centers_xy: Tensor, batch: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Offsets [B, 2, H, W] and weights [B, 1, H, W] of batch-numbered instances in one call.

    The images are stacked along the rows ([B * H, W]) with each center shifted by its
    image's row offset, so ``offset_and_weight`` renders the whole batch at once.
    """
    batch_size, height, width = instance_map.shape
    row_shift = torch.stack([torch.zeros_like(batch), batch * height], dim=1)
    offset, weight = offset_and_weight(
        instance_map.view(batch_size * height, width), centers_xy + row_shift, weights
    )
    offset = offset.view(2, batch_size, height, width).transpose(0, 1).contiguous()
    return offset, weight.view(batch_size, 1, height, width)


def _check_outputs(center: Tensor, offset: Tensor, num_classes: int) -> tuple[int, int, int, int]:
    if center.dim() != 4 or center.shape[1] != num_classes:
        raise ValueError(f"center: expected [B, {num_classes}, H, W], got {tuple(center.shape)}")
    batch_size, _, height, width = center.shape
    if tuple(offset.shape) != (batch_size, 2, height, width):
        raise ValueError(
            f"offset: expected {(batch_size, 2, height, width)}, got {tuple(offset.shape)}"
        )
    return batch_size, num_classes, height, width


@torch.no_grad()
def refine_semantic(
    images: Tensor, seg_logits: Tensor, semantic_map: Tensor, *,
    iterations: int, texture_window: int, stride: int, dilations: list[int],
) -> Tensor:
    """The network's segmentation, restricted to each image's classes and snapped to its edges,
    as a second semantic target: a boundary-aware correction of the WSSS map.

    Per image: the softmax over background and the classes of its WSSS map (the image-level
    labels that survived the crop), refined by PAMR on the image (the ``wsss`` stage's
    :func:`bestie.edge_refine.refine_scores`), then the arg max. Pixels the WSSS map leaves
    unknown (255: unsure, or the crop's padding) stay unknown.

    Args:
        images: [B, 3, H, W] the normalised training images (the refinement's guide).
        seg_logits: [B, C+1, H, W] the network's segmentation logits.
        semantic_map: [B, H, W] integer augmented WSSS map; 0 background, c + 1 class c, 255 void.
        iterations, texture_window, stride, dilations: of the refinement.
    Returns:
        [B, H, W] int64 target; 255 where ``semantic_map`` is 255.
    """
    semantic_map = semantic_map.long()
    known = semantic_map != IGNORE
    present = torch.zeros(seg_logits.shape[:2], dtype=torch.bool, device=seg_logits.device)
    present.scatter_(1, torch.where(known, semantic_map, 0).flatten(1), True)  # background always
    probs = seg_logits.float().masked_fill(~present[..., None, None], float("-inf")).softmax(dim=1)
    refined = torch.stack([
        refine_scores(image, image_probs, method="pamr", texture_window=texture_window, stride=stride,
                      dilations=dilations, iterations=iterations)
        for image, image_probs in zip(images.float(), probs)
    ])
    return refined.argmax(dim=1).masked_fill_(~known, IGNORE)
