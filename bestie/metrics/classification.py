"""Multi-label classification quality: per-class AP of a ranking, F1 of the decisions."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["multilabel_average_precision", "classification_metrics"]


def multilabel_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class average precision of a ranking, all classes at once.

    AP of class c = the mean, over its positive examples, of the precision among the
    examples ranked at or above that positive (non-interpolated, as scikit-learn's
    ``average_precision_score`` without tied scores).

    Args:
        scores: [N, C] any real scores (higher = more confident).
        targets: [N, C] 0/1.
    Returns:
        [C] float; NaN for a class without positives.
    """
    order = scores.argsort(dim=0, descending=True)
    hits = targets.gather(0, order).float()  # [N, C], rank order
    ranks = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.float32)[:, None]
    precision_at_hit = hits.cumsum(dim=0) / ranks * hits
    return precision_at_hit.sum(dim=0) / hits.sum(dim=0)  # 0/0 = NaN for no positives


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Multi-label metrics in percent: mAP over classes with positives, F1 at logit 0.

    ``cls_f1_macro`` averages the per-class F1 over classes that occur or are predicted;
    ``cls_f1_micro`` pools every (image, class) decision.

    Args:
        logits: [N, C]; targets: [N, C] 0/1.
    """
    targets = targets.bool()
    predicted = logits > 0
    tp = (predicted & targets).sum(dim=0).float()
    fp = (predicted & ~targets).sum(dim=0).float()
    fn = (~predicted & targets).sum(dim=0).float()
    f1 = 2 * tp / (2 * tp + fp + fn)  # NaN where the class neither occurs nor is predicted
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
    return {
        "cls_map": 100 * multilabel_average_precision(logits, targets).nanmean().item(),
        "cls_f1_macro": 100 * f1.nanmean().item(),
        "cls_f1_micro": 100 * micro.item(),
    }
