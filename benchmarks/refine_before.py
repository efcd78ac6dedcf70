"""The segmentation refinement as it was before issue 18 (commit d230219), kept verbatim so
``benchmarks/bench_inference.py`` can time it beside today's in the same run.

Not used by the project; do not import it from ``bestie``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bestie.edge_refine import neighbour_offsets, shifted_views


def texture_guide(image: Tensor, window: int = 5) -> Tensor:
    if window == 1:
        return image
    padded = F.pad(image[None].float(), (window // 2,) * 4, mode="replicate")
    mean = F.avg_pool2d(padded, window, stride=1)[0]
    second = F.avg_pool2d(padded * padded, window, stride=1)[0]
    return torch.cat([image, mean, (second - mean * mean).clamp(min=0).sqrt()])


def pamr(guide: Tensor, scores: Tensor, dilations: Sequence[int], iterations: int, temperature: float = 0.1) -> Tensor:
    offsets = neighbour_offsets(dilations)
    guide = guide.float()
    views = shifted_views(guide, offsets)
    count = len(views) + 1
    mean = (sum(views) + guide) / count
    second = (sum(v * v for v in views) + guide * guide) / count
    spread = (second - mean * mean).clamp(min=0).mul(count / (count - 1)).sqrt()
    scale = 1.0 / (len(guide) * (temperature * spread + 1e-8))
    weights = torch.stack([-((v - guide).abs() * scale).sum(dim=0) for v in views]).softmax(dim=0)
    for _ in range(iterations):
        refined = torch.zeros_like(scores)
        for view, weight in zip(shifted_views(scores, offsets), weights):
            refined.addcmul_(view, weight)
        scores = refined
    return scores


def refine_segmentation(
    image: Tensor, seg_logits: Tensor, *, iterations: int, texture_window: int, stride: int, dilations: Sequence[int]
) -> Tensor:
    """``bestie.inference.refine_segmentation`` (PAMR) at d230219."""
    if iterations == 0:
        return seg_logits
    scores = seg_logits.float().softmax(dim=0)
    guide = texture_guide(image, texture_window)
    height, width = scores.shape[-2:]
    if stride > 1:
        guide = F.avg_pool2d(guide[None], stride, ceil_mode=True)[0]
        scores = F.avg_pool2d(scores[None], stride, ceil_mode=True)[0]
    refined = pamr(guide, scores, dilations, iterations)
    probs = refined / refined.sum(dim=0, keepdim=True).clamp(min=1e-8)
    if stride > 1:
        probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs.clamp(min=1e-8).log()
