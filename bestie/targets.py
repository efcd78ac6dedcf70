"""Training targets from accepted instances: center heatmap, offsets, weights (docs/method.md §3).

Targets are rendered per training sample AFTER the augmentation, from the instance map and
centers transformed by the sample's :class:`bestie.data.transforms.GeometricTransform`, so
they are exact in the augmented frame rather than resampled.

Coordinates: pixel (row i, column j) is centred at (x, y) = (j, i). Offsets are [2, H, W]
with channel 0 = dy = cy - y and channel 1 = dx = cx - x. The torch functions follow the
device of their inputs and never synchronise with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["center_heatmap", "center_loss_weight", "offset_and_weight", "render_targets"]


def center_heatmap(
    centers_xy: Tensor,
    classes: Tensor,
    num_classes: int,
    size: tuple[int, int],
    sigma: float = 6.0,
) -> Tensor:
    """Per-class Gaussian center heatmap.

    Args:
        centers_xy: [N, 2] (x, y) centers; they may lie outside the image (the Gaussian's
            tail inside the image is still drawn, as if rendered on a larger map and cropped).
        classes: [N] long class index of each center, in 0..C-1.
        num_classes: C.
        size: (H, W).
        sigma: Gaussian standard deviation in pixels.

    Returns:
        [C, H, W] float32: exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2)) of each center in its
        class channel, merged by max (value exactly 1 at an integer center); zeros if N = 0.

    Shapes are checked, class values are not (that would synchronise with a GPU). Peak
    memory is N x H x W floats (50 centers at 512 x 512: 52 MB).
    """
    _check_centers(centers_xy, classes, "centers_xy", "classes")
    height, width = size
    device = centers_xy.device
    heatmap = torch.zeros(num_classes, height, width, dtype=torch.float32, device=device)
    num_centers = len(centers_xy)
    if num_centers == 0:
        return heatmap

    # The 2-D Gaussian is separable: an outer product of 1-D Gaussians along y and x.
    centers_xy = centers_xy.to(torch.float32)
    two_var = 2.0 * sigma * sigma
    xs = torch.arange(width, dtype=torch.float32, device=device)
    ys = torch.arange(height, dtype=torch.float32, device=device)
    gauss_x = torch.exp(-((xs[None, :] - centers_xy[:, 0:1]) ** 2) / two_var)  # [N, W]
    gauss_y = torch.exp(-((ys[None, :] - centers_xy[:, 1:2]) ** 2) / two_var)  # [N, H]
    gaussians = (gauss_y[:, :, None] * gauss_x[:, None, :]).reshape(num_centers, height * width)

    index = classes.to(device=device, dtype=torch.long)[:, None].expand(-1, height * width)
    heatmap.view(num_classes, height * width).scatter_reduce_(0, index, gaussians, "amax")
    return heatmap


def offset_and_weight(
    instance_map: Tensor,
    centers_xy: Tensor,
    instance_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Center offsets and loss weights of the instance pixels.

    Args:
        instance_map: [H, W] integer; 0 = no instance, k = instance k (1-based, k <= N).
        centers_xy: [N, 2] (x, y) center of each instance.
        instance_weights: [N] weight of each instance; None = all 1.

    Returns:
        offset: [2, H, W] float32; (cy_k - y, cx_k - x) on the pixels of instance k, 0 elsewhere.
        weight: [1, H, W] float32; instance_weights[k - 1] on instance k, 0 elsewhere.
    """
    if instance_map.dim() != 2:
        raise ValueError(f"instance_map: expected [H, W], got shape {tuple(instance_map.shape)}")
    if instance_map.dtype.is_floating_point or instance_map.dtype == torch.bool:
        raise ValueError(f"instance_map: expected an integer tensor, got {instance_map.dtype}")
    if centers_xy.dim() != 2 or centers_xy.shape[1] != 2:
        raise ValueError(f"centers_xy: expected [N, 2], got shape {tuple(centers_xy.shape)}")
    num_instances = len(centers_xy)
    if instance_weights is not None and tuple(instance_weights.shape) != (num_instances,):
        raise ValueError(
            f"instance_weights: expected shape ({num_instances},), "
            f"got {tuple(instance_weights.shape)}"
        )

    height, width = instance_map.shape
    device = instance_map.device
    index = instance_map.long()
    inside = index > 0

    # Row 0 of each lookup table stands for "no instance", so gathering needs no masking.
    centers = torch.cat([centers_xy.new_zeros(1, 2), centers_xy]).to(device, torch.float32)
    center_at = centers[index]  # [H, W, 2] (x, y)
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None]
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :]
    offset = torch.stack([center_at[..., 1] - ys, center_at[..., 0] - xs])
    offset = torch.where(inside, offset, torch.zeros((), device=device))

    if instance_weights is None:
        weight = inside.to(torch.float32)
    else:
        weights = torch.cat([instance_weights.new_zeros(1), instance_weights])
        weight = weights.to(device, torch.float32)[index]
    return offset, weight[None]


def render_targets(
    instance_map: Tensor,
    centers_xy: Tensor,
    classes: Tensor,
    num_classes: int,
    sigma: float = 6.0,
    instance_weights: Tensor | None = None,
    extra_centers_xy: Tensor | None = None,
    extra_classes: Tensor | None = None,
) -> dict[str, Tensor]:
    """All BESTIE targets of one sample.

    Args:
        instance_map: [H, W] integer; 0 = none, k = accepted instance k (1-based).
        centers_xy: [N, 2] (x, y) center of each accepted instance.
        classes: [N] long class of each accepted instance.
        num_classes: C.
        sigma: center Gaussian sigma in pixels.
        instance_weights: [N] or None (all 1).
        extra_centers_xy, extra_classes: [M, 2], [M] centers drawn on the heatmap only
            (point supervision draws every given point, even in rejected components).

    Returns:
        {"center": [C, H, W], "offset": [2, H, W], "weight": [1, H, W]}, all float32.
    """
    if instance_map.dim() != 2:
        raise ValueError(f"instance_map: expected [H, W], got shape {tuple(instance_map.shape)}")
    _check_centers(centers_xy, classes, "centers_xy", "classes")
    if (extra_centers_xy is None) != (extra_classes is None):
        raise ValueError("extra_centers_xy, extra_classes: give both or neither")
    drawn_xy, drawn_classes = centers_xy, classes
    if extra_centers_xy is not None:
        _check_centers(extra_centers_xy, extra_classes, "extra_centers_xy", "extra_classes")
        device = centers_xy.device
        drawn_xy = torch.cat([centers_xy.float(), extra_centers_xy.to(device, torch.float32)])
        drawn_classes = torch.cat([classes.long(), extra_classes.to(device, torch.long)])
    size = (instance_map.shape[0], instance_map.shape[1])
    offset, weight = offset_and_weight(instance_map, centers_xy, instance_weights)
    drawn_xy = drawn_xy.to(instance_map.device)
    center = center_heatmap(drawn_xy, drawn_classes, num_classes, size, sigma)
    return {"center": center, "offset": offset, "weight": weight}


def center_loss_weight(weight: Tensor, semantic: Tensor, supervision: str, dense: bool) -> Tensor:
    """Where the center loss counts, [1, H, W], given the offset loss's ``weight`` [1, H, W].

    With ``dense``, the loss counts wherever the center heatmap is known:

    - point and full labels give every object's center: every pixel, background included;
    - image-level labels give the centers of accepted instances only. The heatmap is known
      on them and on the semantic map's background (``semantic == 0``: no object, so no
      center); it is unknown on rejected components, whose objects' centers are missing.

    Without ``dense``, only on accepted instances (the instance-aware guidance of docs/method.md §3).

    Args:
        weight: [1, H, W] 1 on accepted instance pixels, 0 elsewhere.
        semantic: [H, W] long: 0 background, c + 1 class c, 255 ignore (padding included).
    """
    if not dense:
        return weight
    if supervision in ("point", "full"):
        return torch.ones_like(weight)
    return torch.maximum(weight, (semantic == 0).to(weight.dtype)[None])


def _check_centers(
    centers_xy: Tensor, classes: Tensor, centers_name: str, classes_name: str
) -> None:
    if centers_xy.dim() != 2 or centers_xy.shape[1] != 2:
        raise ValueError(f"{centers_name}: expected [N, 2], got shape {tuple(centers_xy.shape)}")
    if tuple(classes.shape) != (len(centers_xy),):
        raise ValueError(
            f"{classes_name}: expected shape ({len(centers_xy)},), got {tuple(classes.shape)}"
        )
