"""Semantic pseudo labels of a training image: the WSSS maps (docs/method.md §2).

image + image-level classes
  -> :func:`bestie.cam.class_activation_maps`: the classifier's maps of the image's own
     classes, summed over scales and a horizontal flip, scaled to peak at 1       [K, H, W]
  -> :func:`with_background`: a constant background score in front              [K + 1, H, W]
  -> :func:`threshold_labels`: the raw map (arg max, no refinement), or
  -> :func:`bestie.edge_refine.refine_scores`: the scores diffused within regions of like
     colour and texture, stopped at image edges
  -> :func:`confident_labels`: arg max; pixels without a clear winner -> 255 (ignore).

:func:`semantic_pseudo_labels` runs the whole chain for one image. Score maps are
``[K + 1, H, W]`` with channel 0 the background and channel k the image's k-th class;
``classes`` maps channels back to dataset class indices, so label maps hold 0 (background),
``classes[k - 1] + 1`` or 255 (ignore). Every function is pure and follows its input's device.

Measured on the default synthetic data (400 training images, the ``wsss`` stage with an
alpha-0 classifier of val mAP 86), mIoU with ignore pixels left out: raw CAM threshold 43;
local dense CRF 60; PAMR guided by colour alone 61; PAMR guided by
:func:`bestie.edge_refine.texture_guide` 63 with nothing ignored, 69 once its unsure 8 % of
pixels are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bestie.cam import class_activation_maps
from bestie.edge_refine import refine_scores
from bestie.structures import IGNORE

__all__ = [
    "with_background", "otsu_thresholds", "data_background", "BACKGROUNDS", "threshold_labels",
    "confident_labels", "WSSSMaps", "semantic_pseudo_labels",
]


def with_background(cams: Tensor, bg_threshold: float) -> Tensor:
    """Put a constant background score in front of the class maps.

    Under :func:`threshold_labels` a pixel is background exactly when no class map
    exceeds ``bg_threshold`` there.

    Args:
        cams: ``[K, H, W]`` in [0, 1].
    Returns:
        ``[K + 1, H, W]``; channel 0 is ``bg_threshold`` everywhere.
    """
    return torch.cat([torch.full_like(cams[:1], bg_threshold), cams])


def otsu_thresholds(maps: Tensor, bins: int = 256) -> Tensor:
    """Each map's Otsu threshold: the value splitting its pixels into two groups of the largest
    between-group variance (a low "background" and a high "object" mode).

    Args:
        maps: ``[K, H, W]`` in [0, 1].
    Returns:
        ``[K]`` thresholds: a map's values above its threshold are its high group (values are
        binned into ``bins`` equal bins; a threshold is the upper edge of the low group's last bin).
    """
    flat = maps.reshape(len(maps), -1).clamp(0, 1)
    index = (flat * (bins - 1)).round_().long()
    histogram = torch.zeros(len(maps), bins, device=maps.device).scatter_add_(1, index, torch.ones_like(flat))
    share = histogram / flat.shape[1]
    centres = torch.linspace(0, 1, bins, device=maps.device)
    below = share.cumsum(dim=1)  # weight of the low group, threshold after each bin
    below_mass = (share * centres).cumsum(dim=1)
    total_mass = below_mass[:, -1:]
    between = (total_mass * below - below_mass).square() / (below * (1 - below)).clamp(min=1e-12)
    return (between.argmax(dim=1) + 0.5) / (bins - 1)


def data_background(cams: Tensor, bg_threshold: float) -> Tensor:
    """:func:`with_background` with each class map rescaled so that it beats the background
    exactly above its own Otsu threshold (:func:`otsu_thresholds`) instead of above one fixed
    ``bg_threshold`` for every image and class.

    Args:
        cams: ``[K, H, W]`` in [0, 1].
    Returns:
        ``[K + 1, H, W]`` non-negative; channel 0 is ``bg_threshold`` everywhere.
    """
    thresholds = otsu_thresholds(cams).clamp(min=0.05, max=0.95)
    return with_background(cams * (bg_threshold / thresholds)[:, None, None], bg_threshold)


BACKGROUNDS = {"fixed": with_background, "otsu": data_background}


def _check_scores(scores: Tensor, classes: Tensor) -> None:
    if scores.ndim != 3 or scores.shape[0] != len(classes) + 1:
        raise ValueError(
            f"scores must be [K + 1, H, W] with K = {len(classes)} classes, got {tuple(scores.shape)}"
        )


def _label_values(winner: Tensor, classes: Tensor) -> Tensor:
    """Channel index -> label value: 0 stays background, channel k becomes classes[k - 1] + 1."""
    values = torch.cat([classes.new_zeros(1), classes + 1]).to(winner.device)
    return values[winner].to(torch.uint8)


def threshold_labels(scores: Tensor, classes: Tensor) -> Tensor:
    """Arg max of ``[K + 1, H, W]`` scores as an ``[H, W]`` uint8 label map (no ignore)."""
    _check_scores(scores, classes)
    return _label_values(scores.argmax(dim=0), classes)


def confident_labels(probs: Tensor, classes: Tensor, min_confidence: float) -> Tensor:
    """Arg max of ``[K + 1, H, W]`` probabilities; where the winner's probability is below
    ``min_confidence`` the pixel becomes 255 (ignore), not background.

    Returns:
        ``[H, W]`` uint8: 0 background, ``classes[k] + 1``, or 255.
    """
    _check_scores(probs, classes)
    confidence, winner = probs.max(dim=0)
    return _label_values(winner, classes).masked_fill(confidence < min_confidence, IGNORE)


@dataclass(frozen=True)
class WSSSMaps:
    """One image's WSSS maps; maps read from files (``wsss.source: read``) have ``refined`` only."""

    cams: Tensor | None  # [K, H, W] float32 in [0, 1], the image's classes in label order
    raw: Tensor | None  # [H, W] uint8: the CAM threshold map (no refinement, no ignore)
    refined: Tensor  # [H, W] uint8: the refined map, 255 where unsure


def semantic_pseudo_labels(
    model: nn.Module,
    image: Tensor,
    classes: Tensor,
    *,
    scales: Sequence[float],
    flip: bool,
    bg_threshold: float,
    background: str,
    method: str,
    texture_window: int,
    stride: int,
    dilations: Sequence[int],
    iterations: int,
    min_confidence: float,
) -> WSSSMaps:
    """CAMs -> background threshold -> refinement guided by the image -> confident labels.

    Args:
        model: the CAM classifier (eval mode, on ``image``'s device).
        image: ``[3, H, W]`` float, normalised as the model was trained.
        classes: ``[K]`` int64 class indices of the image (may be empty: all background).
        scales, flip: of the CAMs (:func:`bestie.cam.class_activation_maps`).
        bg_threshold: the background score (:func:`with_background`).
        background: ``"fixed"``: a class beats the background where its map exceeds
            ``bg_threshold``; ``"otsu"``: above the map's own Otsu threshold (:func:`data_background`).
        method, texture_window, stride, dilations, iterations: of the refinement
            (:func:`bestie.edge_refine.refine_scores`).
        min_confidence: less confident pixels become 255 (:func:`confident_labels`).
    """
    height, width = image.shape[-2:]
    if len(classes) == 0:
        background = torch.zeros((height, width), dtype=torch.uint8, device=image.device)
        return WSSSMaps(image.new_zeros((0, height, width)), background, background)
    cams = class_activation_maps(
        model, image[None], classes.new_zeros(len(classes)), classes, normalize="total", scales=scales, flip=flip
    )
    scores = BACKGROUNDS[background](cams, bg_threshold)
    probs = refine_scores(
        image, scores, method=method, texture_window=texture_window, stride=stride, dilations=dilations,
        iterations=iterations,
    )
    return WSSSMaps(cams, threshold_labels(scores, classes), confident_labels(probs, classes, min_confidence))
