"""Class activation maps and their refinement into semantic pseudo labels (METHOD.md section 2).

image + image-level classes
  -> :func:`class_activation_maps`: the classifier's maps of the image's own classes,
     averaged over scales and a horizontal flip, each scaled to peak at 1      [K, H, W]
  -> :func:`with_background`: a constant background score in front            [K + 1, H, W]
  -> :func:`threshold_labels`: the raw map (arg max, no refinement), or
  -> :func:`pamr` / :func:`dense_crf`: scores refined to follow image edges
  -> :func:`confident_labels`: arg max, pixels without a clear winner -> 255 (ignore).

Every function is pure and follows its input's device. Score maps are ``[K + 1, H, W]`` with
channel 0 the background and channel k the image's k-th class; ``classes`` maps the channels
back to dataset class indices, so label maps hold 0 (background), ``classes[k - 1] + 1`` or
255 (ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IGNORE",
    "class_activation_maps",
    "with_background",
    "threshold_labels",
    "confident_labels",
    "neighbour_offsets",
    "local_neighbours",
    "pamr",
    "dense_crf",
    "confusion_matrix",
    "iou_per_class",
    "SemanticMaps",
    "semantic_pseudo_labels",
]

IGNORE = 255


# --------------------------------------------------------------------------------------------
# Class activation maps
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def class_activation_maps(
    model: nn.Module,
    image: Tensor,
    classes: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
) -> Tensor:
    """CAMs of the image's own classes, averaged over scales and flips, each peaking at 1.

    At each scale the image is resized (bilinear), passed through ``model`` together with its
    mirror image, and the relu'd class maps are mirrored back and resized to the image; the
    sum over scales and flips is divided by each class's maximum.

    Args:
        model: in eval mode, on ``image``'s device; ``model(x)["cams"]`` is ``[B, C, h, w]``.
        image: ``[3, H, W]`` float, normalised as the model was trained.
        classes: ``[K]`` int64, dataset class indices present in the image (K >= 1).
        scales: resize factors (> 0).
        flip: also average over the horizontally mirrored image.
    Returns:
        ``[K, H, W]`` float32 in [0, 1], one map per entry of ``classes``.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    if classes.ndim != 1 or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty [K] index tensor, got {tuple(classes.shape)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {list(scales)}")
    height, width = image.shape[-2:]
    total = image.new_zeros((len(classes), height, width), dtype=torch.float32)
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        cams = F.relu(model(x)["cams"][:, classes].float())  # [1 or 2, K, h, w]
        if flip:
            cams = cams[0] + cams[1].flip(-1)
        else:
            cams = cams[0]
        total += F.interpolate(cams[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    peak = total.amax(dim=(-2, -1), keepdim=True)
    return total / peak.clamp(min=1e-5)


def with_background(cams: Tensor, bg_threshold: float) -> Tensor:
    """Put a constant background score in front of the class maps.

    A pixel is background under :func:`threshold_labels` exactly when no class map reaches
    ``bg_threshold`` there.

    Args:
        cams: ``[K, H, W]`` in [0, 1].
    Returns:
        ``[K + 1, H, W]``; channel 0 is ``bg_threshold`` everywhere.
    """
    background = torch.full_like(cams[:1], bg_threshold)
    return torch.cat([background, cams])


def _to_label_values(winner: Tensor, classes: Tensor) -> Tensor:
    """Channel index -> label value: 0 stays background, channel k becomes classes[k-1] + 1."""
    values = torch.cat([classes.new_zeros(1), classes + 1]).to(winner.device)
    return values[winner].to(torch.uint8)


def threshold_labels(scores: Tensor, classes: Tensor) -> Tensor:
    """Arg max of ``[K + 1, H, W]`` scores as a label map ``[H, W]`` uint8 (no ignore)."""
    _check_scores(scores, classes)
    return _to_label_values(scores.argmax(dim=0), classes)


def confident_labels(probs: Tensor, classes: Tensor, min_confidence: float) -> Tensor:
    """Arg max of ``[K + 1, H, W]`` probabilities; pixels whose winner has less than
    ``min_confidence`` become 255 (ignore), not background.

    Returns:
        ``[H, W]`` uint8: 0 background, ``classes[k] + 1``, or 255.
    """
    _check_scores(probs, classes)
    confidence, winner = probs.max(dim=0)
    labels = _to_label_values(winner, classes)
    return labels.masked_fill(confidence < min_confidence, IGNORE)


def _check_scores(scores: Tensor, classes: Tensor) -> None:
    if scores.ndim != 3 or scores.shape[0] != len(classes) + 1:
        raise ValueError(
            f"scores must be [K + 1, H, W] with K = {len(classes)} classes, got {tuple(scores.shape)}"
        )


# --------------------------------------------------------------------------------------------
# Edge-aware refinement
# --------------------------------------------------------------------------------------------


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours of a 3x3 window at each dilation, as (dy, dx)."""
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in ring]


def local_neighbours(x: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """Each pixel's values at the given offsets, borders replicated.

    Args:
        x: ``[C, H, W]``.
        offsets: P pairs (dy, dx).
    Returns:
        ``[C, P, H, W]``: ``out[:, p, y, x] = x[:, clamp(y + dy_p), clamp(x + dx_p)]``.
    """
    height, width = x.shape[-2:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], (reach,) * 4, mode="replicate")[0]
    return torch.stack(
        [padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width] for dy, dx in offsets],
        dim=1,
    )


def pamr(
    image: Tensor,
    scores: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    iterations: int = 10,
    temperature: float = 0.1,
) -> Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

    Each iteration replaces a pixel's scores by an average of its neighbours' (8 a dilation),
    weighted by how alike the neighbour's colour is::

        w_ij = softmax_j( -mean_c |I_ci - I_cj| / (temperature * std_c(i)) )

    where ``std_c(i)`` is the colour's standard deviation over i's neighbourhood, so the
    weights adapt to the local contrast: scores spread within regions and stop at edges.

    Args:
        image: ``[3, H, W]`` float (any affine colour scale: the weights are scale-free).
        scores: ``[K + 1, H, W]``.
    Returns:
        ``[K + 1, H, W]`` refined scores.
    """
    offsets = neighbour_offsets(dilations)
    image = image.float()
    colour = local_neighbours(image, offsets)  # [3, P, H, W]
    # Standard deviation over the pixel and its P neighbours, from the first two moments
    # (torch.std over a strided dim is several times slower).
    count = len(offsets) + 1
    mean = (colour.sum(dim=1) + image) / count
    second = ((colour * colour).sum(dim=1) + image * image) / count
    spread = (second - mean * mean).clamp(min=0).mul(count / (count - 1)).sqrt()[:, None]
    logits = -(colour - image[:, None]).abs() / (temperature * spread + 1e-8)
    weights = logits.mean(dim=0).softmax(dim=0)  # [P, H, W]
    for _ in range(iterations):
        scores = (local_neighbours(scores, offsets) * weights).sum(dim=1)
    return scores


def dense_crf(
    image: Tensor,
    probs: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8),
    iterations: int = 10,
    colour_sigma: float = 0.1,
    spatial_sigma: float = 8.0,
    weight: float = 4.0,
) -> Tensor:
    """Mean-field inference of a dense CRF whose pairwise term lives in a local window.

    Unary: ``-log probs``. Pairwise: a Potts model with the bilateral kernel
    ``k_ij = exp(-|p_i - p_j|^2 / 2 spatial_sigma^2 - |I_i - I_j|^2 / 2 colour_sigma^2)`` over the
    dilated 3x3 neighbourhoods of ``dilations`` (a sparse stand-in for the fully connected
    kernel of Kraehenbuehl & Koltun). Each iteration::

        Q = softmax(log probs + weight * sum_j k_ij Q_j)

    Args:
        image: ``[3, H, W]`` float with colours in [0, 1].
        probs: ``[K + 1, H, W]`` positive, summing to 1 over channels.
    Returns:
        ``[K + 1, H, W]`` marginals Q.
    """
    offsets = neighbour_offsets(dilations)
    colour = local_neighbours(image.float(), offsets)  # [3, P, H, W]
    distance2 = torch.tensor([dy * dy + dx * dx for dy, dx in offsets], device=image.device, dtype=torch.float32)
    kernel = torch.exp(
        -((colour - image.float()[:, None]) ** 2).sum(dim=0) / (2 * colour_sigma**2)
        - distance2[:, None, None] / (2 * spatial_sigma**2)
    )  # [P, H, W]
    unary = probs.clamp(min=1e-8).log()
    q = probs
    for _ in range(iterations):
        message = (local_neighbours(q, offsets) * kernel).sum(dim=1)
        q = (unary + weight * message).softmax(dim=0)
    return q


# --------------------------------------------------------------------------------------------
# Evaluation against ground truth
# --------------------------------------------------------------------------------------------


def confusion_matrix(prediction: Tensor, target: Tensor, num_labels: int) -> Tensor:
    """Pixel counts ``[num_labels, num_labels]`` (rows: ground truth, columns: prediction).

    Pixels that are 255 on *either* side are left out: ground-truth void and the pixels
    the prediction marks as ignore (report the ignore share separately).

    Args:
        prediction, target: ``[H, W]`` integer label maps (0..num_labels-1 or 255).
    """
    keep = (prediction != IGNORE) & (target != IGNORE)
    index = target[keep].long() * num_labels + prediction[keep].long()
    return torch.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def iou_per_class(confusion: Tensor) -> Tensor:
    """``[L]`` IoU of each label from a confusion matrix; NaN where a label never occurs."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
    return hits / union  # 0 / 0 = NaN: neither in the ground truth nor predicted


# --------------------------------------------------------------------------------------------
# The whole recipe of the wsss stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticMaps:
    """What :func:`semantic_pseudo_labels` makes of one image."""

    cams: Tensor  # [K, H, W] in [0, 1], one map per image class
    raw: Tensor  # [H, W] uint8: the CAM threshold, no refinement
    refined: Tensor  # [H, W] uint8: PAMR-refined, unsure pixels 255


def semantic_pseudo_labels(model: nn.Module, image: Tensor, classes: Tensor, params) -> SemanticMaps:
    """CAMs of the image's classes -> background threshold -> PAMR -> confident labels.

    Args:
        model: the classifier (``model(x)["cams"]``), eval mode, on ``image``'s device.
        image: ``[3, H, W]`` normalised.
        classes: ``[K]`` the image's class indices.
        params: :class:`bestie.config.WSSSParams` (scales, flip, bg_threshold, PAMR and
            confidence settings).
    """
    cams = class_activation_maps(model, image, classes, params.scales, params.flip)
    scores = with_background(cams, params.bg_threshold)
    raw = threshold_labels(scores, classes)
    refined = pamr(image, scores, params.pamr_dilations, params.pamr_iterations)
    probs = (refined / params.temperature).softmax(dim=0)
    return SemanticMaps(cams, raw, confident_labels(probs, classes, params.min_confidence))
