"""Grouping component pixels into instances by center peaks and offset votes, shared by
inference post-processing (:mod:`bestie.postprocess`, docs/method.md §7) and self-refinement
(:mod:`bestie.refine`, §6).

Panoptic-DeepLab style, but confined to segmentation components:

1. components: per class, the 8-connected components of the class's pixels
   (:func:`bestie.spatial.class_components`);
2. centers: local maxima of the class's center map (max filter of width ``nms_kernel``)
   above a threshold that lie inside a component of that class;
3. every component pixel at (y, x) votes for (y + dy, x + dx) and joins the nearest center
   of its own component; a component without a center is one instance.

Refinement runs the grouping on a training batch, so everything here is batched: ``[B, ...]``
tensors on any device, one gather for the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bestie.spatial import max_filter

__all__ = [
    "ComponentInstances",
    "PointInstances",
    "center_peaks",
    "component_peaks",
    "group_pixels",
    "instances_in_components",
    "instances_at_points",
]


def center_peaks(center: Tensor, threshold: float, nms_kernel: int) -> Tensor:
    """Center candidates: pixels that equal their window maximum and exceed ``threshold``.

    Args:
        center: [..., H, W] center heatmaps.

    Returns:
        [..., H, W] bool.
    """
    return (center == max_filter(center, nms_kernel)) & (center > threshold)


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
    component* (:func:`component_peaks`). Each component pixel joins the nearest of its
    component's peaks by its offset vote; a component without a peak is one instance centered
    at its centroid; a component with more than ``max_centers`` peaks yields nothing.
    Instances that no pixel joins are dropped.

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
