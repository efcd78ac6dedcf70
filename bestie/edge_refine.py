"""Edge-aware refinement of class scores (docs/method.md §2): scores diffused within regions of
like colour and texture and stopped at image edges.

Used on the CAM scores of the WSSS maps (:mod:`bestie.wsss`) and on the trained network's
class probabilities before grouping (:func:`bestie.inference.refine_segmentation`), both
through :func:`refine_scores`: :func:`pamr` (pixel-adaptive mask refinement) or
:func:`dense_crf` (a local dense CRF), guided by :func:`texture_guide`, on a coarser grid.
Every function is pure and follows its input's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["neighbour_offsets", "shifted_views", "texture_guide", "pamr", "dense_crf", "refine_scores"]


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours of a 3x3 window at each dilation, as (dy, dx) pairs."""
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in ring]


def shifted_views(x: Tensor, offsets: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Each pixel's values at the given offsets, as views of one border-replicated copy.

    Refinement loops over these P views and accumulates, rather than stacking a
    ``[C, P, H, W]`` tensor: the same arithmetic, a P-times smaller working set.

    Args:
        x: ``[C, H, W]``.
        offsets: P pairs (dy, dx).
    Returns:
        P tensors ``[C, H, W]``: ``views[p][:, y, x] = x[:, clamp(y + dy_p), clamp(x + dx_p)]``.
    """
    height, width = x.shape[-2:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], (reach,) * 4, mode="replicate")[0]
    return [padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width] for dy, dx in offsets]


def texture_guide(image: Tensor, window: int = 5) -> Tensor:
    """Colour plus its local mean and standard deviation: what refinement compares pixels by.

    Colour alone separates a two-tone textured object into its two tones; the mean and the
    spread over a ``window`` x ``window`` box are nearly constant across such a texture and
    still change at the object's border.

    Args:
        image: ``[C, H, W]`` float.
        window: odd box size; 1 returns ``image`` unchanged.
    Returns:
        ``[3C, H, W]`` (``[C, H, W]`` for window 1).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd size >= 1, got {window}")
    if window == 1:
        return image
    padded = F.pad(image[None].float(), (window // 2,) * 4, mode="replicate")
    mean = F.avg_pool2d(padded, window, stride=1)[0]
    second = F.avg_pool2d(padded * padded, window, stride=1)[0]
    return torch.cat([image, mean, (second - mean * mean).clamp(min=0).sqrt()])


def pamr(
    guide: Tensor,
    scores: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    iterations: int = 10,
    temperature: float = 0.1,
) -> Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

    Each iteration replaces a pixel's scores by an average of its neighbours' (8 a dilation),
    weighted by how alike the neighbour looks::

        w_ij = softmax_j( -mean_f |g_fi - g_fj| / (temperature * std_f(i)) )

    with ``std_f(i)`` the guide channel's standard deviation over i and its neighbours, so the
    weights adapt to the local contrast: scores spread within regions and stop at edges.
    The weights are invariant to a per-channel affine change of the guide.

    Args:
        guide: ``[F, H, W]`` float, e.g. colours or :func:`texture_guide`.
        scores: ``[K + 1, H, W]``.
    Returns:
        ``[K + 1, H, W]`` refined scores (a pixel's total is a weighted average of totals).
    """
    offsets = neighbour_offsets(dilations)
    guide = guide.float()
    views = shifted_views(guide, offsets)
    count = len(views) + 1
    mean = (sum(views) + guide) / count
    second = (sum(v * v for v in views) + guide * guide) / count
    spread = (second - mean * mean).clamp(min=0).mul(count / (count - 1)).sqrt()
    scale = 1.0 / (len(guide) * (temperature * spread + 1e-8))  # also averages over channels
    weights = torch.stack([-((v - guide).abs() * scale).sum(dim=0) for v in views]).softmax(dim=0)
    for _ in range(iterations):
        refined = torch.zeros_like(scores)
        for view, weight in zip(shifted_views(scores, offsets), weights):
            refined.addcmul_(view, weight)
        scores = refined
    return scores


def dense_crf(
    guide: Tensor,
    probs: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8),
    iterations: int = 10,
    guide_sigma: float = 0.5,
    spatial_sigma: float = 16.0,
    weight: float = 1.0,
) -> Tensor:
    """Mean-field inference of a dense CRF whose pairwise term lives in dilated windows.

    Unary: ``-log probs``. Pairwise: a Potts model with the bilateral kernel
    ``k_ij = exp(-|p_i - p_j|^2 / 2 spatial_sigma^2 - |g_i - g_j|^2 / 2 guide_sigma^2)`` over
    the dilated 3x3 neighbourhoods of ``dilations``, a sparse stand-in for the fully
    connected kernel of Kraehenbuehl & Koltun. Each iteration::

        Q = softmax(log probs + weight * sum_j k_ij Q_j)

    Args:
        guide: ``[F, H, W]`` float; ``guide_sigma`` is in its units (the default suits
            ImageNet-normalised colours and their :func:`texture_guide`).
        probs: ``[K + 1, H, W]`` summing to 1 over channels.
    Returns:
        ``[K + 1, H, W]`` marginals Q.
    """
    offsets = neighbour_offsets(dilations)
    guide = guide.float()
    kernel = torch.stack(
        [
            torch.exp(-((v - guide) ** 2).sum(dim=0) / (2 * guide_sigma**2) - (dy * dy + dx * dx) / (2 * spatial_sigma**2))
            for v, (dy, dx) in zip(shifted_views(guide, offsets), offsets)
        ]
    )  # [P, H, W]
    unary = probs.clamp(min=1e-8).log()
    q = probs
    for _ in range(iterations):
        message = torch.zeros_like(q)
        for view, k in zip(shifted_views(q, offsets), kernel):
            message.addcmul_(view, k)
        q = (unary + weight * message).softmax(dim=0)
    return q


def refine_scores(
    image: Tensor,
    scores: Tensor,
    *,
    method: str,
    texture_window: int,
    stride: int,
    dilations: Sequence[int],
    iterations: int,
) -> Tensor:
    """Refine an image's ``[K + 1, H, W]`` scores on a grid ``stride`` times coarser.

    The guide, :func:`texture_guide` of ``image`` over ``texture_window``, and the scores are
    average-pooled by the stride, refined there (``method`` ``"pamr"`` or ``"crf"``, its
    ``dilations`` in coarse pixels: a stride of 2 quarters the cost and doubles the reach),
    and the probabilities resized back (bilinear).

    Args:
        image: ``[3, H, W]`` float, the normalised image.
        scores: ``[K + 1, H, W]`` non-negative scores.

    Returns:
        ``[K + 1, H, W]`` probabilities (summing to 1 over channels).
    """
    if method not in ("pamr", "crf"):
        raise ValueError(f"method: must be 'pamr' or 'crf', got {method!r}")
    guide = texture_guide(image, texture_window)
    height, width = scores.shape[-2:]
    if stride > 1:
        guide = F.avg_pool2d(guide[None], stride, ceil_mode=True)[0]
        scores = F.avg_pool2d(scores[None], stride, ceil_mode=True)[0]
    if method == "pamr":
        refined = pamr(guide, scores, dilations, iterations)
        probs = refined / refined.sum(dim=0, keepdim=True).clamp(min=1e-8)
    else:
        probs = scores / scores.sum(dim=0, keepdim=True).clamp(min=1e-8)
        probs = dense_crf(guide, probs, dilations, iterations)
    if stride > 1:
        probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs
