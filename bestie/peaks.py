"""Peak points from class maps (docs/method.md §1): one instance cue per object.

For each image and each class the image is labelled with:

1. ``relu`` of the class map, bilinear resize to the image size, divide by its maximum;
2. average with the same from the horizontally flipped image, flipped back (1 and 2:
   :func:`bestie.cam.class_activation_maps` with ``normalize="per_pass"``);
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

from bestie.cam import class_activation_maps, within_images
from bestie.data.datasets import pad_collate
from bestie.errors import BestieError
from bestie.spatial import max_filter

__all__ = [
    "batch_peaks",
    "predict_peaks",
    "write_peaks",
    "read_peaks",
]

PEAKS_HEADER = "image_name\tx\ty\tclass_index\tscore"


def _smooth(maps: Tensor, valid: Tensor, kernel: int) -> Tensor:
    """Mean filter over each image's own pixels only (as if the image were alone, unpadded)."""
    if kernel == 1:
        return maps
    pool = lambda x: F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2)  # noqa: E731
    valid = valid.float()
    return pool(maps) / pool(valid).clamp(min=1e-12) * valid


@torch.no_grad()
def batch_peaks(
    model: nn.Module,
    images: Tensor,
    image_labels: Tensor,
    image_sizes: Tensor,
    *,
    flip: bool,
    smooth_kernel: int,
    nms_kernel: int,
    max_per_class: int,
    score_thresh: float,
) -> list[np.ndarray]:
    """Peak points of a batch (see the module docstring for the steps).

    Args:
        model: returns ``{"cams": [B, C, h, w]}`` (a PAM classifier, in eval mode).
        images: [B, 3, H, W] normalised, padded at the bottom/right.
        image_labels: [B, C] multi-hot: peaks are looked for in these classes only.
        image_sizes: [B, 2] int (height, width) of each image.
        flip: average the class maps with those of the images mirrored within their widths.
        smooth_kernel, nms_kernel: odd window sizes in pixels (smooth_kernel 1: no smoothing).
        max_per_class: keep at most this many peaks per (image, class), the highest.
        score_thresh: keep peaks with score >= this (and always > 0).
    Returns:
        B arrays [K_b, 4] float32 of (x, y, class, score), by class, then by score descending.
    """
    for name, kernel in (("smooth_kernel", smooth_kernel), ("nms_kernel", nms_kernel)):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"{name} must be a positive odd number, got {kernel}")
    num_images, device, size = len(images), images.device, tuple(images.shape[-2:])
    # Work on the labelled (image, class) pairs only: other class maps can hold no peaks.
    image, klass = image_labels.to(device).bool().nonzero(as_tuple=True)  # [N] each
    if len(image) == 0:
        return [np.zeros((0, 4), np.float32) for _ in range(num_images)]
    image_sizes = image_sizes.to(device)
    maps = class_activation_maps(
        model, images, image, klass, normalize="per_pass", image_sizes=image_sizes, flip=flip
    )[:, None]  # [N, 1, H, W]
    valid = within_images(image_sizes[image], size)  # [N, 1, H, W]
    maps = _smooth(maps, valid, smooth_kernel)

    # A local maximum equals the max of its window.
    is_peak = (maps == max_filter(maps, nms_kernel)) & (maps >= score_thresh) & (maps > 0) & valid
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
            of :func:`batch_peaks`.
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
        found = batch_peaks(model, images.to(device), labels, sizes, flip=flip, **peak_options)
        for index, image_peaks in zip(order[done : done + len(images)], found):
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
