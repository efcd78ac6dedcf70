"""Peak points from class maps (METHOD.md section 1): one instance cue per object.

For each image and each class the image is labelled with:

1. ``relu`` of the class map, bilinear resize to the image size, divide by its maximum;
2. average with the same from the horizontally flipped image, flipped back;
3. ``smooth_kernel`` x ``smooth_kernel`` mean filter;
4. local maxima: pixels equal to the max-pool of their ``nms_kernel`` window;
5. the ``max_per_class`` highest of them with score >= ``score_thresh``.

Batches may hold images of different sizes, padded at the bottom and right
(:func:`bestie.data.datasets.pad_collate`); ``image_sizes`` says which part of each padded
map is image, and every step (flip, smoothing, peaks) keeps to that part, so a padded
batch gives what each image alone would, up to the convolutions' view of the padding.

Peaks are ``[K, 4]`` float32 arrays of ``(x, y, class, score)`` rows per image (x = column).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bestie.data.datasets import pad_collate
from bestie.errors import BestieError

__all__ = [
    "flip_within_width",
    "class_maps_with_flip",
    "normalized_class_maps",
    "extract_peaks",
    "predict_peaks",
    "write_peaks",
    "read_peaks",
]

PEAKS_HEADER = "image_name\tx\ty\tclass_index\tscore"


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


@torch.no_grad()
def class_maps_with_flip(
    model: nn.Module, images: Tensor, widths: Tensor, flip: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Class maps of a batch and, with ``flip``, of its mirror images, in one forward pass.

    Args:
        model: returns ``{"cams": [B, C, h, w]}`` (a PAM classifier, in eval mode).
        images: [B, 3, H, W] normalised, padded at the bottom/right with 0.
        widths: [B] valid width of each image.
    Returns:
        cams [B, C, h, w]; flipped_cams [B, C, h, w] of the images mirrored within their
        widths (not flipped back: :func:`extract_peaks` does that at full resolution), or None.
    """
    if not flip:
        return model(images)["cams"], None
    cams = model(torch.cat([images, flip_within_width(images, widths)]))["cams"]
    return cams[: len(images)], cams[len(images) :]


def _valid_mask(image_sizes: Tensor, size: tuple[int, int], device: torch.device) -> Tensor:
    """[B, 2] (height, width) -> [B, 1, H, W] bool, True on each image's own pixels."""
    image_sizes = image_sizes.to(device)
    rows = torch.arange(size[0], device=device).view(1, -1, 1) < image_sizes[:, 0].view(-1, 1, 1)
    cols = torch.arange(size[1], device=device).view(1, 1, -1) < image_sizes[:, 1].view(-1, 1, 1)
    return (rows & cols)[:, None]


def normalized_class_maps(cams: Tensor, keep: Tensor, size: tuple[int, int]) -> Tensor:
    """relu, bilinear resize to ``size``, zero outside ``keep``, divide each map by its max.

    Args:
        cams: [B, C, h, w] raw class maps.
        keep: [B, C, H, W] bool (broadcastable, e.g. [B, 1, H, W]): each image's own pixels.
        size: (H, W) the padded input size.
    Returns:
        [B, C, H, W] in [0, 1]; a map that is 0 everywhere stays 0.
    """
    maps = F.interpolate(cams.float().relu(), size=size, mode="bilinear", align_corners=False)
    maps = maps * keep
    return maps / maps.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)


def _smooth(maps: Tensor, valid: Tensor, kernel: int) -> Tensor:
    """Mean filter over each image's own pixels only (as if the image were alone, unpadded)."""
    if kernel == 1:
        return maps
    pool = lambda x: F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2)  # noqa: E731
    valid = valid.float()
    return pool(maps) / pool(valid).clamp(min=1e-12) * valid


def _max_filter(maps: Tensor, kernel: int) -> Tensor:
    """Max over the ``kernel`` x ``kernel`` window of each pixel (-inf beyond the border).

    A square max is a row max of column maxes: two 1-D pools cost 2k, not k^2, a pixel.
    """
    pad = kernel // 2
    rows = F.max_pool2d(maps, (1, kernel), stride=1, padding=(0, pad))
    return F.max_pool2d(rows, (kernel, 1), stride=1, padding=(pad, 0))


def extract_peaks(
    cams: Tensor,
    image_labels: Tensor,
    image_sizes: Tensor,
    *,
    flipped_cams: Tensor | None = None,
    input_size: tuple[int, int] | None = None,
    smooth_kernel: int = 3,
    nms_kernel: int = 15,
    max_per_class: int = 25,
    score_thresh: float = 0.1,
) -> list[np.ndarray]:
    """Peak points of a batch (see the module docstring for the steps).

    Args:
        cams: [B, C, h, w] class maps of a batch of images padded at the bottom/right.
        image_labels: [B, C] multi-hot: peaks are looked for in these classes only.
        image_sizes: [B, 2] int (height, width) of each image.
        flipped_cams: [B, C, h, w] class maps of the images mirrored within their widths
            (:func:`class_maps_with_flip`), or None for no flip averaging.
        input_size: (H, W) of the padded batch the maps were computed on; default: the
            largest height and width in ``image_sizes``.
        smooth_kernel, nms_kernel: odd window sizes in pixels (smooth_kernel 1: no smoothing).
        max_per_class: keep at most this many peaks per (image, class), the highest.
        score_thresh: keep peaks with score >= this (and always > 0).
    Returns:
        B arrays [K_b, 4] float32 of (x, y, class, score), by class, then by score descending.
    """
    for name, kernel in (("smooth_kernel", smooth_kernel), ("nms_kernel", nms_kernel)):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"{name} must be a positive odd number, got {kernel}")
    num_images, device = len(cams), cams.device
    size = input_size or tuple(int(s) for s in image_sizes.max(dim=0).values)
    # Work on the labelled (image, class) pairs only: other class maps can hold no peaks.
    image, klass = image_labels.to(device).bool().nonzero(as_tuple=True)  # [N] each
    if len(image) == 0:
        return [np.zeros((0, 4), np.float32) for _ in range(num_images)]
    sizes = image_sizes.to(device)[image]  # [N, 2]
    valid = _valid_mask(sizes, size, device)  # [N, 1, H, W]

    maps = normalized_class_maps(cams[image, klass][:, None], valid, size)  # [N, 1, H, W]
    if flipped_cams is not None:
        flipped = normalized_class_maps(flipped_cams[image, klass][:, None], valid, size)
        maps = (maps + flip_within_width(flipped, sizes[:, 1])) / 2  # valid is mirror-symmetric
    maps = _smooth(maps, valid, smooth_kernel)

    # A local maximum equals the max of its window.
    is_peak = (maps == _max_filter(maps, nms_kernel)) & (maps >= score_thresh) & (maps > 0) & valid
    candidates = maps.masked_fill(~is_peak, -1.0).flatten(1)  # [N, H*W]
    scores, index = candidates.topk(min(max_per_class, candidates.shape[-1]), dim=-1)  # [N, k]
    pair, rank = torch.nonzero(scores >= 0, as_tuple=True)
    flat = index[pair, rank]
    rows = torch.stack(
        [flat % size[1], flat // size[1], klass[pair], scores[pair, rank]], dim=1
    ).float().cpu().numpy()  # [P, 4]; x and y are exact in float32 up to 2**24 px
    # A canonical order (topk leaves ties in any order): image, class, score down, raster.
    batch, flat = image[pair].cpu().numpy(), flat.cpu().numpy()
    order = np.lexsort((flat, -rows[:, 3], rows[:, 2], batch))
    counts = np.bincount(batch, minlength=num_images)
    return np.split(rows[order], np.cumsum(counts)[:-1])


@torch.no_grad()
def predict_peaks(
    model: nn.Module,
    dataset: Dataset,
    image_sizes: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    flip: bool,
    device: torch.device,
    **peak_options,
) -> list[np.ndarray]:
    """Peaks of every image of ``dataset`` (items: normalised image [3, H, W], labels [C]).

    Images are batched in order of size, so a batch pads little; ``batch_size`` 1 runs each
    image alone at its own size.

    Args:
        image_sizes: (height, width) of each item, to order the batches.
        peak_options: ``smooth_kernel``, ``nms_kernel``, ``max_per_class``, ``score_thresh``
            of :func:`extract_peaks`.
    Returns:
        per item, in dataset order, [K, 4] float32 (x, y, class, score).
    """
    model.eval().to(device)
    order = sorted(range(len(dataset)), key=lambda i: tuple(image_sizes[i]))
    # Padding to a multiple of the output stride makes the class-map grid cover the input
    # exactly, so resizing maps it back at exactly the stride, for every image of the batch.
    collate = partial(pad_collate, size_divisor=getattr(model, "output_stride", 1))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=collate)
    peaks: list[np.ndarray] = [np.zeros((0, 4), np.float32)] * len(dataset)
    done = 0
    for images, labels, sizes in tqdm(loader, desc="peaks", unit="batch", disable=None):
        cams, flipped_cams = class_maps_with_flip(model, images.to(device), sizes[:, 1], flip)
        batch_peaks = extract_peaks(
            cams, labels, sizes, flipped_cams=flipped_cams, input_size=images.shape[-2:], **peak_options
        )
        for index, image_peaks in zip(order[done : done + len(images)], batch_peaks):
            peaks[index] = image_peaks
        done += len(images)
    return peaks


def write_peaks(path: str | os.PathLike, names: Sequence[str], peaks: Sequence[np.ndarray]) -> None:
    """Write a peaks table: a header, then one ``image_name x y class_index score`` line a peak (tabs)."""
    lines = [PEAKS_HEADER]
    for name, image_peaks in zip(names, peaks, strict=True):
        lines += [f"{name}\t{x:g}\t{y:g}\t{int(c)}\t{s:.6f}" for x, y, c, s in image_peaks.tolist()]
    Path(path).write_text("\n".join(lines) + "\n")


def read_peaks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_peaks`: image name -> [K, 4] float32 (x, y, class, score).

    Images without peaks are absent from the table and from the result.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: peaks file not found; run the peaks stage")
    rows: dict[str, list[list[float]]] = {}
    lines = path.read_text().splitlines()
    if not lines or lines[0] != PEAKS_HEADER:
        raise BestieError(f"{path}: expected the header {PEAKS_HEADER!r}")
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            if len(fields) != 5:
                raise ValueError
            rows.setdefault(fields[0], []).append([float(v) for v in fields[1:]])
        except ValueError:
            raise BestieError(f"{path}:{number}: expected 'image_name x y class_index score'") from None
    return {name: np.asarray(r, dtype=np.float32).reshape(-1, 4) for name, r in rows.items()}
