"""Network outputs -> instances (METHOD.md §7), and the grouping it shares with refinement.

Grouping, Panoptic-DeepLab style but confined to segmentation components:

1. components: per class, the 8-connected components of the class's pixels (>= min_size px);
2. centers: local maxima of the class's center map (max filter of width ``nms_kernel``)
   above a threshold that lie inside a component of that class;
3. every component pixel at (y, x) votes for (y + dy, x + dx) and joins the nearest center
   of its own component; a component without a center is one instance.

Self-refinement (:mod:`bestie.refine`) runs the same grouping on a training batch, inside
the WSSS components, so the primitives here are batched: ``[B, ...]`` tensors on any
device, one gather for the whole batch. :func:`postprocess` itself runs on the CPU, where
the connected components are labelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

__all__ = [
    "Instances",
    "ComponentInstances",
    "PointInstances",
    "max_filter",
    "center_peaks",
    "component_peaks",
    "class_components",
    "group_pixels",
    "instances_in_components",
    "instances_at_points",
    "merge_flip",
    "postprocess",
    "postprocess_batch",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class Instances:
    """The instances of one image, sorted by score (descending)."""

    masks: np.ndarray  # [N, H, W] bool, at the original image size
    classes: np.ndarray  # [N] int64, 0-based
    scores: np.ndarray  # [N] float32

    def __len__(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------


def _max_filter_1d(x: Tensor, kernel: int, dim: int) -> Tensor:
    length = x.shape[dim]
    radius = kernel // 2
    pad = [0, 0] * (x.dim() - 1 - dim) + [radius, radius]
    window_max = F.pad(x, pad, value=float("-inf"))
    # Window doubling: after the loop window_max[i] = max(padded[i : i + width]).
    width = 1
    while 2 * width <= kernel:
        size = window_max.shape[dim] - width
        window_max = torch.maximum(
            window_max.narrow(dim, 0, size), window_max.narrow(dim, width, size)
        )
        width *= 2
    # Two overlapping windows of `width` cover the `kernel` window exactly.
    return torch.maximum(
        window_max.narrow(dim, 0, length), window_max.narrow(dim, kernel - width, length)
    )


def max_filter(x: Tensor, kernel: int) -> Tensor:
    """Max over the kernel x kernel window centred on each pixel (positions outside ignored).

    Equal to ``F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)`` but separable and by
    window doubling: O(log kernel) per pixel instead of O(kernel^2), two orders of
    magnitude faster on the CPU at kernel 41.

    Args:
        x: [..., H, W] float.
        kernel: odd window width.

    Returns:
        [..., H, W], same dtype.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: must be a positive odd number, got {kernel}")
    if x.dim() < 2:
        raise ValueError(f"x: expected [..., H, W], got shape {tuple(x.shape)}")
    return _max_filter_1d(_max_filter_1d(x, kernel, x.dim() - 1), kernel, x.dim() - 2)


def center_peaks(center: Tensor, threshold: float, nms_kernel: int) -> Tensor:
    """Center candidates: pixels that equal their window maximum and exceed ``threshold``.

    Args:
        center: [..., H, W] center heatmaps.

    Returns:
        [..., H, W] bool.
    """
    return (center == max_filter(center, nms_kernel)) & (center > threshold)


def class_components(
    semantic_map: np.ndarray, classes: Iterable[int], min_size: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class 8-connected components of a semantic map.

    Args:
        semantic_map: [H, W] uint8; 0 background, c + 1 class c, 255 void.
        classes: the classes to label; pixels of other classes are ignored.
        min_size: components with fewer pixels are dropped.

    Returns:
        component_map: [H, W] int32; 0 = none, k = component k (1-based), numbered by class
            then in ``ndimage.label`` order.
        component_class: [K] int64; the class of component k at index k - 1.
    """
    semantic_map = np.asarray(semantic_map)
    if semantic_map.ndim != 2 or semantic_map.dtype != np.uint8:
        raise ValueError(
            "semantic_map: expected a uint8 [H, W] array, got "
            f"{semantic_map.dtype} {semantic_map.shape}"
        )
    component_map = np.zeros(semantic_map.shape, dtype=np.int32)
    component_class: list[np.ndarray] = []
    # A class with fewer than min_size pixels cannot hold a component: skip its labelling
    # (noisy predictions scatter a few pixels of many classes).
    label_size = np.bincount(semantic_map.ravel(), minlength=256)
    candidates = set((np.flatnonzero(label_size >= min_size) - 1).tolist())
    next_id = 1
    for cls in sorted({int(c) for c in classes}):
        if cls < 0:
            raise ValueError(f"classes: class indices must be >= 0, got {cls}")
        if cls not in candidates:
            continue
        mask = semantic_map == cls + 1
        labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        large = np.bincount(labels.ravel(), minlength=count + 1) >= min_size
        large[0] = False
        num_large = int(large.sum())
        if num_large == 0:
            continue
        new_id = np.zeros(count + 1, dtype=np.int32)
        new_id[large] = np.arange(next_id, next_id + num_large, dtype=np.int32)
        component_map[mask] = new_id[labels[mask]]
        component_class.append(np.full(num_large, cls, dtype=np.int64))
        next_id += num_large
    classes_out = np.concatenate(component_class) if component_class else np.zeros(0, np.int64)
    return component_map, classes_out


def group_pixels(
    votes_yx: Tensor,
    pixel_group: Tensor,
    centers_yx: Tensor,
    center_group: Tensor,
    num_groups: int,
) -> Tensor:
    """Assign each pixel to the nearest center (Euclidean) of its own group.

    Centers are laid out in padded [G, S] tables (S = most centers in one group, missing
    slots at +inf), so each pixel compares its vote with the S centers of its group only:
    O(P * S) work and memory instead of a [P, N] distance matrix.

    Args:
        votes_yx: [P, 2] float (y, x) each pixel votes for.
        pixel_group: [P] long group of each pixel, in 0..G-1.
        centers_yx: [N, 2] float (y, x) centers.
        center_group: [N] long group of each center, in 0..G-1.
        num_groups: G.

    Returns:
        [P] long index into the centers; -1 for pixels whose group has no center. Ties go
        to the center listed first.
    """
    device = votes_yx.device
    num_centers = len(centers_yx)
    if num_centers == 0 or len(votes_yx) == 0:
        return torch.full((len(votes_yx),), -1, dtype=torch.long, device=device)
    order = torch.argsort(center_group, stable=True)
    sorted_group = center_group[order]
    count = torch.bincount(center_group, minlength=num_groups)
    first = torch.cumsum(count, 0) - count
    slot = torch.arange(num_centers, device=device) - first[sorted_group]
    num_slots = int(count.max())

    # Separate y and x tables: a trailing dim of 2 makes the reduction ~3x slower on the CPU.
    table_y = torch.full((num_groups, num_slots), float("inf"), device=device)
    table_x = torch.full((num_groups, num_slots), float("inf"), device=device)
    table_y[sorted_group, slot] = centers_yx[order, 0].float()
    table_x[sorted_group, slot] = centers_yx[order, 1].float()
    index = torch.full((num_groups, num_slots), -1, dtype=torch.long, device=device)
    index[sorted_group, slot] = order

    distance = (votes_yx[:, 0:1] - table_y[pixel_group]).square_()  # [P, S]
    distance += (votes_yx[:, 1:2] - table_x[pixel_group]).square_()
    return index[pixel_group, distance.argmin(1)]


def _unravel(flat: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(b, y, x) of flat indices into a [B, H, W] grid."""
    b, yx = flat // (height * width), flat % (height * width)
    return b, yx // width, yx % width


def _pixel_votes(offset: Tensor, b: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """[P, 2] (y + dy, x + dx) of the pixels (b, y, x) under offsets [B, 2, H, W]."""
    _, _, height, width = offset.shape
    # One flat gather per channel: much faster than 4-tensor advanced indexing.
    flat = offset.reshape(-1)
    dy_index = (b * 2 * height + y) * width + x
    dx_index = dy_index + height * width
    return torch.stack([y + flat[dy_index], x + flat[dx_index]], dim=1)


def _segment_min_max(values: Tensor, segment: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    low = values.new_full((num_segments,), torch.iinfo(values.dtype).max)
    high = values.new_full((num_segments,), torch.iinfo(values.dtype).min)
    return low.scatter_reduce_(0, segment, values, "amin"), high.scatter_reduce_(0, segment, values, "amax")


def component_peaks(
    center: Tensor,
    pixel_component: Tensor,
    class_of: Tensor,
    pixel_group: Tensor,
    pixel_y: Tensor,
    pixel_x: Tensor,
    *,
    num_slots: int,
    threshold: float,
    nms_kernel: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Center peaks of each component on its class's center map masked to the component.

    A pixel is a peak of its component if it exceeds ``threshold`` and no pixel *of the same
    component* within the ``nms_kernel`` window is higher: a higher peak outside (a
    neighbouring or occluded object of the same class) does not suppress it, as in the
    published method. All components are cut out at once as [N, h, w] crops of their
    bounding boxes (h, w: the largest box), -inf outside the component, and max-filtered
    together.

    Args:
        center: [B, C, H, W] center heatmaps.
        pixel_component: [B, H, W] long global component id g = b * num_slots + k, with
            k = 0 (no component) at g = b * num_slots.
        class_of: [B * num_slots] long class of each global id, -1 for none.
        pixel_group, pixel_y, pixel_x: [P] long global id and position of every component
            pixel (the image is ``pixel_group // num_slots``).

    Returns:
        (peak_y [M], peak_x [M], peak_component [M] global ids, peak_score [M] float32), in
        order of component, then row-major inside it.
    """
    batch_size, _, height, width = center.shape
    device = center.device
    num_groups = batch_size * num_slots
    groups = torch.unique(pixel_group)  # [N] components that have pixels
    if len(groups) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, torch.zeros(0, device=device)
    y_min, y_max = (t[groups] for t in _segment_min_max(pixel_y, pixel_group, num_groups))
    x_min, x_max = (t[groups] for t in _segment_min_max(pixel_x, pixel_group, num_groups))
    crop_h, crop_w = int((y_max - y_min).max()) + 1, int((x_max - x_min).max()) + 1
    rows = y_min[:, None] + torch.arange(crop_h, device=device)  # [N, h]
    cols = x_min[:, None] + torch.arange(crop_w, device=device)  # [N, w]
    in_image = (rows < height)[:, :, None] & (cols < width)[:, None, :]
    rows, cols = rows.clamp(max=height - 1)[:, :, None], cols.clamp(max=width - 1)[:, None, :]
    image = (groups // num_slots)[:, None, None]
    inside = in_image & (pixel_component[image, rows, cols] == groups[:, None, None])
    values = center[image, class_of[groups][:, None, None], rows, cols].float()
    masked = torch.where(inside, values, float("-inf"))
    is_peak = center_peaks(masked, threshold, nms_kernel) & inside
    n, crop_y, crop_x = is_peak.nonzero(as_tuple=True)
    return y_min[n] + crop_y, x_min[n] + crop_x, groups[n], masked[n, crop_y, crop_x]


class ComponentInstances(NamedTuple):
    """Instances grouped inside components, numbered across the batch."""

    instance_map: Tensor  # [B, H, W] long; 0 none, n = instance n (1-based)
    batch: Tensor  # [N] long
    classes: Tensor  # [N] long
    centers_yx: Tensor  # [N, 2] float32; the peak, or the component centroid
    center_scores: Tensor  # [N] float32; center map value at the peak (0 for centroids)
    has_peak: Tensor  # [N] bool; False: a center-less component, centered at its centroid


def instances_in_components(
    center: Tensor,
    offset: Tensor,
    component_map: Tensor,
    component_class: Tensor,
    *,
    threshold: float,
    nms_kernel: int,
    max_centers: int | None = None,
) -> ComponentInstances:
    """Split each component into instances by center peaks and offset votes.

    A component's peaks are the local maxima of its class's center map *masked to the
    component* (:func:`component_peaks`). Each component pixel joins the nearest of its component's peaks by its offset
    vote; a component without a peak is one instance centered at its centroid; a component
    with more than ``max_centers`` peaks yields nothing. Instances that no pixel joins are
    dropped.

    Args:
        center: [B, C, H, W] center heatmaps.
        offset: [B, 2, H, W] (dy, dx); pixel (y, x) votes for (y + dy, x + dx).
        component_map: [B, H, W] integer; 0 = none, k = component k of the image (1-based).
        component_class: [B, K] long; class of component k at index k - 1, -1 padding.
        threshold: peaks must exceed it.
        nms_kernel: odd width of the peak window.
        max_centers: components with more peaks are skipped; None: no limit.
    """
    batch_size, num_classes, height, width = center.shape
    device = center.device
    component_map = component_map.to(device, torch.long)
    component_class = component_class.to(device, torch.long)
    _check_components(component_map, component_class, num_classes)

    # Global component id g = b * S + k with S = K + 1: slot 0 of each image stands for
    # "no component", so the per-pixel lookups are plain gathers.
    num_slots = component_class.shape[1] + 1
    num_groups = batch_size * num_slots
    image = torch.arange(batch_size, device=device)
    pixel_component = component_map + image[:, None, None] * num_slots  # [B, H, W]
    class_of = F.pad(component_class, (1, 0), value=-1).reshape(-1)  # [G]

    # Every component pixel, with its global component id.
    members = component_map > 0
    flat = members.view(-1).nonzero().squeeze(1)
    pixel_b, pixel_y, pixel_x = _unravel(flat, height, width)
    pixel_group = pixel_component.view(-1)[flat]
    size = torch.bincount(pixel_group, minlength=num_groups)
    if bool((class_of[size > 0] < 0).any()):
        raise ValueError("component_class: a component of component_map has class -1")

    peak_y, peak_x, peak_component, peak_score = component_peaks(
        center, pixel_component, class_of, pixel_group, pixel_y, pixel_x,
        num_slots=num_slots, threshold=threshold, nms_kernel=nms_kernel,
    )
    if max_centers is not None:
        crowded = torch.bincount(peak_component, minlength=num_groups) > max_centers
        keep = ~crowded[peak_component]
        peak_y, peak_x = peak_y[keep], peak_x[keep]
        peak_component, peak_score = peak_component[keep], peak_score[keep]
        if bool(crowded.any()):
            kept = ~crowded[pixel_group]
            flat, pixel_b, pixel_y, pixel_x = flat[kept], pixel_b[kept], pixel_y[kept], pixel_x[kept]
            pixel_group = pixel_group[kept]
            size = torch.bincount(pixel_group, minlength=num_groups)

    # A component without peaks is one instance at its centroid.
    num_peaks = torch.bincount(peak_component, minlength=num_groups)
    centerless = ((size > 0) & (num_peaks == 0)).nonzero().squeeze(1)
    yx = torch.stack([pixel_y, pixel_x], dim=1).float()
    yx_sum = torch.zeros(num_groups, 2, device=device).index_add_(0, pixel_group, yx)
    centroid = yx_sum[centerless] / size[centerless, None]

    centers_yx = torch.cat([torch.stack([peak_y, peak_x], dim=1).float(), centroid])
    center_group = torch.cat([peak_component, centerless])
    votes = _pixel_votes(offset.float(), pixel_b, pixel_y, pixel_x)
    owner = group_pixels(votes, pixel_group, centers_yx, center_group, num_groups)

    # Number the instances that received pixels 1..N.
    used = torch.bincount(owner, minlength=len(centers_yx)) > 0
    new_id = torch.cumsum(used, 0)
    instance_map = torch.zeros(batch_size * height * width, dtype=torch.long, device=device)
    instance_map[flat] = new_id[owner]
    return ComponentInstances(
        instance_map=instance_map.view(batch_size, height, width),
        batch=(center_group // num_slots)[used],
        classes=class_of[center_group][used],
        centers_yx=centers_yx[used],
        center_scores=torch.cat([peak_score, peak_score.new_zeros(len(centerless))])[used],
        has_peak=(torch.arange(len(centers_yx), device=device) < len(peak_y))[used],
    )


class PointInstances(NamedTuple):
    """Pixels grouped to given points, numbered across the batch."""

    instance_map: Tensor  # [B, H, W] long; 0 none, n = the n-th valid point (1-based)
    batch: Tensor  # [N] long, image of each valid point
    points_xy: Tensor  # [N, 2] float32
    classes: Tensor  # [N] long


def instances_at_points(
    offset: Tensor, pixel_class: Tensor, points_xy: Tensor, point_classes: Tensor, num_classes: int
) -> PointInstances:
    """Group each class's pixels to the nearest given point of that class by offset votes.

    Args:
        offset: [B, 2, H, W] (dy, dx).
        pixel_class: [B, H, W] long class of each pixel to group, -1 = none.
        points_xy: [B, P, 2] (x, y) points.
        point_classes: [B, P] long class of each point, -1 padding.
        num_classes: C.

    Returns:
        The valid points in (image, point) order; pixels of a class without points in
        their image stay 0.
    """
    batch_size = offset.shape[0]
    points_xy = points_xy.to(offset.device, torch.float32)
    point_classes = point_classes.to(offset.device, torch.long)
    if (
        points_xy.dim() != 3
        or points_xy.shape[2] != 2
        or points_xy.shape[:2] != point_classes.shape
    ):
        raise ValueError(
            f"points_xy, point_classes: expected [B, P, 2] and [B, P], got "
            f"{tuple(points_xy.shape)} and {tuple(point_classes.shape)}"
        )
    if len(point_classes) != batch_size:
        raise ValueError(f"point_classes: expected {batch_size} images, got {len(point_classes)}")
    if bool((point_classes >= num_classes).any()):
        raise ValueError(f"point_classes: class indices must be < {num_classes}")
    valid = point_classes >= 0
    point_b, point_i = valid.nonzero(as_tuple=True)
    valid_xy = points_xy[point_b, point_i]
    valid_classes = point_classes[point_b, point_i]

    pixel_b, pixel_y, pixel_x = (pixel_class >= 0).nonzero(as_tuple=True)
    pixel_group = pixel_b * num_classes + pixel_class[pixel_b, pixel_y, pixel_x]
    votes = _pixel_votes(offset.float(), pixel_b, pixel_y, pixel_x)
    owner = group_pixels(
        votes,
        pixel_group,
        valid_xy.flip(-1),
        point_b * num_classes + valid_classes,
        batch_size * num_classes,
    )
    instance_map = torch.zeros(pixel_class.shape, dtype=torch.long, device=offset.device)
    instance_map[pixel_b, pixel_y, pixel_x] = owner + 1  # -1 (no point) -> 0
    return PointInstances(instance_map, point_b, valid_xy, valid_classes)


def _check_components(component_map: Tensor, component_class: Tensor, num_classes: int) -> None:
    if component_map.dim() != 3 or component_class.dim() != 2:
        raise ValueError(
            f"component_map, component_class: expected [B, H, W] and [B, K], got "
            f"{tuple(component_map.shape)} and {tuple(component_class.shape)}"
        )
    if len(component_map) != len(component_class):
        raise ValueError("component_map, component_class: batch sizes differ")
    num_slots = component_class.shape[1]
    if component_map.numel() > 0:
        low, high = torch.aminmax(component_map)
        if int(low) < 0 or int(high) > num_slots:
            raise ValueError(
                f"component_map: ids must lie in 0..{num_slots} "
                f"(component_class is [B, {num_slots}])"
            )
    if bool((component_class >= num_classes).any()):
        raise ValueError(f"component_class: class indices must be < {num_classes}")


def _segment_mean(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    total = values.new_zeros(num_segments).index_add_(0, segment, values)
    count = torch.bincount(segment, minlength=num_segments).clamp(min=1)
    return total / count


def _segment_max(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    out = values.new_full((num_segments,), float("-inf"))
    return out.scatter_reduce_(0, segment, values, "amax")


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------

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
    component_map, component_class = class_components(semantic, range(num_classes), min_size)
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


def postprocess_batch(
    outputs: dict[str, Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    points: Sequence[tuple[Tensor, Tensor] | None] | None = None,
    **kwargs,
) -> list[Instances]:
    """:func:`postprocess` for every image of a batch, moving the batch to the CPU once.

    Args:
        outputs: {"seg": [B, C+1, h, w], "center": [B, C, h, w], "offset": [B, 2, h, w]}.
        image_sizes: (H, W) of each original image.
        points: optional per-image ``points`` argument of :func:`postprocess`.
        kwargs: the other keyword arguments of :func:`postprocess`.
    """
    seg, center, offset = (outputs[k].detach().to("cpu", torch.float32) for k in OUTPUT_KEYS)
    if not len(seg) == len(image_sizes):
        raise ValueError(f"image_sizes: expected {len(seg)} sizes, got {len(image_sizes)}")
    if points is not None and len(points) != len(seg):
        raise ValueError(f"points: expected {len(seg)} entries, got {len(points)}")
    return [
        postprocess(
            seg[i],
            center[i],
            offset[i],
            image_size=image_sizes[i],
            points=None if points is None else points[i],
            **kwargs,
        )
        for i in range(len(seg))
    ]


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
