"""Class activation maps of the PAM classifier, for both of their uses: the peak points
(:mod:`bestie.peaks`, docs/method.md §1) and the WSSS maps (:mod:`bestie.wsss`, §2).

:func:`class_activation_maps` runs the classifier on a batch and on its mirror images in one
forward pass, keeps the relu'd maps of the requested (image, class) pairs, mirrors the
second pass back and resizes to the input. The two uses combine the passes differently, and
each way is pinned by the numbers its stage produces, so ``normalize`` names it:

- ``"total"`` (WSSS): the passes, over every scale and the mirror, are summed and the sum is
  divided by its maximum, so a stronger pass weighs more. The mirror pass is flipped back on
  the class-map grid and added before the one resize per scale, which needs images that fill
  the input.
- ``"per_pass"`` (peaks): each pass is resized, cut to its image and divided by its own
  maximum, then the passes are averaged, so the mirror weighs as much as the image. The
  mirror is flipped back at the input resolution within each image's width, so a batch of
  images of different sizes padded at the bottom and right (:func:`bestie.data.datasets.pad_collate`)
  gives what each image alone would, up to the convolutions' view of the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = ["flip_within_width", "within_images", "class_activation_maps"]

NORMALIZATIONS = ("total", "per_pass")


def flip_within_width(x: Tensor, widths: Tensor) -> Tensor:
    """Mirror each sample horizontally inside its own width; the padding columns stay in place.

    Args:
        x: [B, ..., W] a padded batch.
        widths: [B] valid width of each sample.
    Returns:
        [B, ..., W]: column ``i < widths[b]`` of sample ``b`` is its column ``widths[b] - 1 - i``.
    """
    columns = torch.arange(x.shape[-1], device=x.device)
    widths = widths.to(x.device).view(-1, 1)
    index = torch.where(columns < widths, widths - 1 - columns, columns)  # [B, W]
    index = index.view(len(x), *[1] * (x.dim() - 2), x.shape[-1]).expand_as(x)
    return x.gather(-1, index)


def within_images(image_sizes: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, 2] (height, width) -> [N, 1, H, W] bool, True on each image's own pixels of a
    batch padded to ``size`` at the bottom and right."""
    device = image_sizes.device
    rows = torch.arange(size[0], device=device).view(1, -1, 1) < image_sizes[:, 0].view(-1, 1, 1)
    cols = torch.arange(size[1], device=device).view(1, 1, -1) < image_sizes[:, 1].view(-1, 1, 1)
    return (rows & cols)[:, None]


@torch.no_grad()
def class_activation_maps(
    model: nn.Module,
    images: Tensor,
    image_index: Tensor,
    classes: Tensor,
    *,
    normalize: str,
    image_sizes: Tensor | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
) -> Tensor:
    """CAMs of the given (image, class) pairs, averaged over scales and the mirror image,
    each peaking at 1.

    At each scale the batch is resized (bilinear) and passed through ``model`` together with
    its mirror image; the relu'd maps are resized to the input and combined as ``normalize``
    says (module docstring).

    Args:
        model: in eval mode, on ``images``' device; ``model(x)["cams"]`` is ``[B, C, h, w]``.
        images: ``[B, 3, H, W]`` float, normalised as the model was trained, padded at the
            bottom and right.
        image_index, classes: ``[N]`` int64: the image and the dataset class of each map.
        normalize: ``"total"`` or ``"per_pass"``.
        image_sizes: ``[B, 2]`` (height, width) of each image; None: every image fills the
            input. A padded batch takes ``normalize="per_pass"`` and the scale 1 only.
        scales: resize factors (> 0).
        flip: also average over the images mirrored within their widths.
    Returns:
        ``[N, H, W]`` float32 in [0, 1], 0 outside each pair's image; a map that is 0
        everywhere stays 0.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    if classes.ndim != 1 or image_index.shape != classes.shape:
        shapes = f"{tuple(image_index.shape)}, {tuple(classes.shape)}"
        raise ValueError(f"image_index, classes must be [N] each, got {shapes}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    batch_size, _, height, width = images.shape
    full_size = torch.tensor([height, width], device=images.device)
    sizes = full_size.expand(batch_size, 2) if image_sizes is None else image_sizes.to(images.device)
    padded = bool((sizes != full_size).any())
    if padded and (normalize == "total" or list(scales) != [1.0]):
        raise ValueError("a padded batch (image sizes below the input's) needs normalize='per_pass' and scale 1")
    total = images.new_zeros((len(classes), height, width), dtype=torch.float32)
    if len(classes) == 0:
        return total
    valid = within_images(sizes[image_index], (height, width))  # [N, 1, H, W]
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = images
        if size != (height, width):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:  # one batch: the images and their mirrors
            x = torch.cat([x, flip_within_width(x, sizes[:, 1]) if padded else x.flip(-1)])
        # The pairs' relu'd maps [N, h, w]: of the images, then of their mirrors.
        passes = [half[image_index, classes].float().relu() for half in model(x)["cams"].split(batch_size)]
        if normalize == "total":
            summed = passes[0] + passes[1].flip(-1) if flip else passes[0]
            total += F.interpolate(summed[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            continue
        for mirrored, maps in enumerate(passes):
            maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False) * valid
            maps = maps / maps.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
            total += (flip_within_width(maps, sizes[image_index, 1]) if mirrored else maps)[:, 0]
    if normalize == "total":
        return total / total.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-5)
    return total / (len(scales) * (1 + flip))

