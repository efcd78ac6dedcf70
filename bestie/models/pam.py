"""The PAM classifier (docs/method.md §1): multi-label, its class maps peak once per object.

backbone (deepest map) -> 3 x [3x3 conv -> Peak Attention] -> 1x1 conv to C class maps ->
global average pooling -> logits. The class maps before pooling are the CAMs that peak
extraction and the WSSS stage read.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bestie.models.backbones import Backbone

__all__ = ["peak_attention", "PeakAttention", "PAMClassifier", "multilabel_loss"]


def peak_attention(x: Tensor, alpha: float) -> Tensor:
    """Peak Attention: keep, per sample and channel, only activations near the channel's peak.

    ``x = relu(x)``; with ``m`` the spatial max of each (sample, channel), activations below
    ``alpha * m`` become 0 and the rest pass unchanged. ``alpha = 0`` is exactly ``relu(x)``
    (the plain-CAM ablation). Gradients flow through the kept activations only.

    Args:
        x: ``[..., H, W]`` activations.
        alpha: threshold relative to each map's peak, in [0, 1].
    Returns:
        ``[..., H, W]``, same dtype and device.
    """
    x = F.relu(x)
    peak = x.amax(dim=(-2, -1), keepdim=True)
    return x.masked_fill(x < alpha * peak, 0.0)


class PeakAttention(nn.Module):
    """Module form of :func:`peak_attention` (no parameters)."""

    def __init__(self, alpha: float = 0.7):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]"""
        return peak_attention(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class PAMClassifier(nn.Module):
    """Multi-label classifier with Peak Attention after each of three extra 3x3 convs.

    Args:
        num_classes: C, foreground classes (no background channel).
        backbone: its ``deepest`` map is classified (:func:`~bestie.models.build_backbone`:
            "vgg16" is the published one); the extra convs keep that map's width (512 for
            vgg16 as published, 128 for small at width 32).
        alpha: PAM threshold; 0 gives a plain CAM classifier.
    """

    def __init__(self, num_classes: int, backbone: Backbone, alpha: float = 0.7):
        super().__init__()
        self.backbone = backbone
        self.feature = backbone.deepest
        self.output_stride = backbone.strides[self.feature]
        width = backbone.out_channels[self.feature]
        self.extra_convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(3))
        self.pam = PeakAttention(alpha)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        # As published: He normal (fan-out) weights, zero bias.
        for m in (*self.extra_convs, self.classifier):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {"logits": [B, C], "cams": [B, C, H/os, W/os]}.

        ``cams`` are the class maps before pooling (raw, not relu'd or normalised).
        """
        x = self.backbone(images)[self.feature]
        for conv in self.extra_convs:
            x = self.pam(conv(x))
        cams = self.classifier(x)
        return {"logits": cams.mean(dim=(-2, -1)), "cams": cams}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": ..., "head": ...}: the published recipe gives the new layers a higher lr."""
        backbone = list(self.backbone.parameters())
        seen = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in seen]}


def multilabel_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft margin loss: mean binary cross-entropy with logits.

    Args:
        logits: ``[B, C]``.
        labels: ``[B, C]``, 1 where the class occurs in the image, else 0.
    Returns:
        scalar tensor.
    """
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
