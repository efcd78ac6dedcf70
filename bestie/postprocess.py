"""Network outputs -> instances (docs/method.md §7).

The segmentation's arg max is split into per-class components
(:func:`bestie.spatial.class_components`), and each component into instances by its center
peaks and the offset votes (:mod:`bestie.grouping`), or by given points. Runs on the CPU,
where the connected components are labelled.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bestie.grouping import instances_at_points, instances_in_components
from bestie.spatial import class_components
from bestie.structures import Instances

__all__ = ["merge_flip", "postprocess"]

OUTPUT_KEYS = ("seg", "center", "offset")


def merge_flip(outputs: dict[str, Tensor], flipped_outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Average the outputs of an image and of its horizontally flipped copy.

    Args:
        outputs, flipped_outputs: {"seg": [..., C+1, H, W] logits, "center": [..., C, H, W],
            "offset": [..., 2, H, W] (dy, dx)}; the second from the flipped input.

    Returns:
        The same keys: seg logits and center maps averaged after flipping the second pass
        back; offsets likewise, with its dx negated (a flip mirrors horizontal vectors).
    """
    for name, value in (("outputs", outputs), ("flipped_outputs", flipped_outputs)):
        missing = [k for k in OUTPUT_KEYS if k not in value]
        if missing:
            raise ValueError(f"{name}: missing key {missing[0]!r}")
    back = {k: flipped_outputs[k].flip(-1) for k in OUTPUT_KEYS}
    mirror = back["offset"].new_tensor([1.0, -1.0])[:, None, None]
    return {
        "seg": (outputs["seg"] + back["seg"]) / 2,
        "center": (outputs["center"] + back["center"]) / 2,
        "offset": (outputs["offset"] + back["offset"] * mirror) / 2,
    }


def postprocess(
    seg_logits: Tensor,
    center: Tensor,
    offset: Tensor,
    *,
    image_size: tuple[int, int],
    min_size: int = 50,
    center_threshold: float = 0.1,
    nms_kernel: int = 41,
    points: tuple[Tensor, Tensor] | None = None,
) -> Instances:
    """Instances of one image from the network outputs.

    Args:
        seg_logits: [C+1, h, w] segmentation logits (channel 0 background).
        center: [C, h, w] class-wise center heatmaps.
        offset: [2, h, w] (dy, dx) in pixels of the (h, w) grid.
        image_size: (H, W) of the original image; masks are returned at this size.
        min_size: smallest component kept, in pixels of the (h, w) grid.
        center_threshold: peaks must exceed it.
        nms_kernel: odd width of the peak window.
        points: optional (points_xy [P, 2] (x, y) in (h, w) coordinates, point_classes [P]):
            point-guided inference. Each class's component pixels join the nearest point of
            that class by their votes, one instance per point that receives pixels (score
            1 x mean probability); components of classes without points are dropped.

    Returns:
        Instances sorted by score, descending. Score = center score x mean segmentation
        probability of the instance's pixels (the probability of its class, which is their
        argmax). The center score is the peak value clipped to [0, 1]; a component without
        a peak is one instance scored by the largest value of its class's center map inside
        it (clipped to [0, 1]): a region the center head barely sees ranks low rather than
        with full confidence.

    The instance label map is formed at (h, w) and resized to (H, W) by nearest neighbour
    (pixel centres aligned): exactly the network-resolution decision, and (H*W)/(h*w)
    cheaper than resizing the logits and maps first.
    """
    seg_logits, center, offset = (
        t.detach().to("cpu", torch.float32) for t in (seg_logits, center, offset)
    )
    _check_outputs(seg_logits, center, offset)
    num_classes, height, width = center.shape
    top_logit, semantic = _max_argmax(seg_logits.numpy())
    component_map, component_class = class_components(semantic, range(num_classes), min_size=min_size)
    component_map = torch.from_numpy(component_map).long()
    component_class = torch.from_numpy(component_class)

    if points is None:
        grouped = instances_in_components(
            center[None],
            offset[None],
            component_map[None],
            component_class[None],
            threshold=center_threshold,
            nms_kernel=nms_kernel,
        )
        instance_map, classes = grouped.instance_map[0], grouped.classes
        center_scores, has_peak = grouped.center_scores, grouped.has_peak
    else:
        points_xy, point_classes = (torch.as_tensor(p) for p in points)
        class_of = torch.cat([component_class.new_full((1,), -1), component_class])
        pixel_class = class_of[component_map]
        grouped = instances_at_points(
            offset[None], pixel_class[None], points_xy[None], point_classes[None], num_classes
        )
        instance_map, classes = _drop_empty(grouped.instance_map[0], grouped.classes)
        center_scores = torch.ones(len(classes))
        has_peak = torch.ones(len(classes), dtype=torch.bool)

    num_instances = len(classes)
    flat = instance_map.view(-1).nonzero().squeeze(1)
    owner = instance_map.view(-1)[flat] - 1
    # Softmax probability of the argmax class, only where it is needed: 1 / sum exp(l - max).
    logits_at = seg_logits.reshape(num_classes + 1, -1).index_select(1, flat)
    prob = (logits_at - torch.from_numpy(top_logit).view(-1)[flat]).exp_().sum(0).reciprocal_()
    mean_prob = _segment_mean(prob, owner, num_instances)
    if not bool(has_peak.all()):
        owner_center = center.reshape(num_classes, -1)[classes[owner], flat]
        component_max = _segment_max(owner_center, owner, num_instances)
        center_scores = torch.where(has_peak, center_scores, component_max)
    scores = center_scores.clamp(0, 1) * mean_prob

    order = torch.argsort(scores, descending=True, stable=True)
    rank = torch.zeros(num_instances + 1, dtype=torch.long)
    rank[order + 1] = torch.arange(1, num_instances + 1)
    label_map = _resize_nearest(rank[instance_map].numpy(), image_size)
    masks = label_map[None] == np.arange(1, num_instances + 1)[:, None, None]
    return Instances(
        masks=masks,
        classes=classes[order].numpy().astype(np.int64),
        scores=scores[order].numpy().astype(np.float32),
    )


def _check_outputs(seg_logits: Tensor, center: Tensor, offset: Tensor) -> None:
    if center.dim() != 3 or seg_logits.dim() != 3 or offset.dim() != 3:
        raise ValueError("seg_logits, center, offset: expected [C+1, h, w], [C, h, w], [2, h, w]")
    num_classes, height, width = center.shape
    expected_seg, expected_offset = (num_classes + 1, height, width), (2, height, width)
    if tuple(seg_logits.shape) != expected_seg or tuple(offset.shape) != expected_offset:
        raise ValueError(
            f"seg_logits, center, offset: expected [C+1, h, w], [C, h, w], [2, h, w], got "
            f"{tuple(seg_logits.shape)}, {tuple(center.shape)}, {tuple(offset.shape)}"
        )
    if num_classes > 254:
        raise ValueError(f"center: at most 254 classes fit a uint8 label map, got {num_classes}")


def _max_argmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max and argmax (uint8) over the channels of [K <= 255, h, w] logits.

    Arg-reductions over a leading axis are slow in torch and numpy (~10x a plain max); the
    first channel reaching the maximum is found by a max over descending channel weights.
    """
    num_channels = len(logits)
    top = logits.max(0)
    first_wins = np.arange(num_channels, 0, -1, dtype=np.uint8)[:, None, None]
    return top, num_channels - ((logits == top) * first_wins).max(0)


def _drop_empty(instance_map: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Renumber the instances that own pixels 1..N."""
    used = torch.bincount(instance_map.flatten(), minlength=len(classes) + 1)[1:] > 0
    new_id = torch.cat([used.new_zeros(1, dtype=torch.long), torch.cumsum(used, 0)])
    return new_id[instance_map], classes[used]


def _resize_nearest(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [H, W] nearest neighbour with pixel centres aligned."""
    (height, width), (out_h, out_w) = label_map.shape, size
    if (out_h, out_w) == (height, width):
        return label_map
    rows = np.minimum(((np.arange(out_h) + 0.5) * (height / out_h)).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (width / out_w)).astype(np.int64), width - 1)
    return label_map[rows[:, None], cols[None, :]]


def _segment_mean(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    total = values.new_zeros(num_segments).index_add_(0, segment, values)
    count = torch.bincount(segment, minlength=num_segments).clamp(min=1)
    return total / count


def _segment_max(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    out = values.new_full((num_segments,), float("-inf"))
    return out.scatter_reduce_(0, segment, values, "amax")
