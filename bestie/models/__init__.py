"""Networks: swappable backbones, the PAM classifier, the BESTIE (Panoptic-DeepLab) network and
the DeepLab-style segmentation network of the WSSS step.

Every model takes ImageNet-normalised RGB images ``[B, 3, H, W]`` and returns a dict of
named outputs.
"""

from bestie.models.backbones import (
    BACKBONES,
    Backbone,
    HRNetBackbone,
    ResNetBackbone,
    SmallBackbone,
    VGG16Backbone,
    build_backbone,
)
from bestie.models.pam import PAMClassifier, PeakAttention, multilabel_loss, peak_attention
from bestie.models.deeplab import EmbeddingNet, SegmentationNet
from bestie.models.panoptic_deeplab import BestieNet

__all__ = [
    "BACKBONES",
    "Backbone",
    "BestieNet",
    "EmbeddingNet",
    "HRNetBackbone",
    "PAMClassifier",
    "PeakAttention",
    "ResNetBackbone",
    "SegmentationNet",
    "SmallBackbone",
    "VGG16Backbone",
    "build_backbone",
    "multilabel_loss",
    "peak_attention",
]
