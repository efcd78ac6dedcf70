"""The BESTIE network (docs/method.md §4): Panoptic-DeepLab with class-wise center maps.

::

    images -> backbone -> semantic decoder (ASPP + 2 low-level fusions) -> segmentation head (C+1)
                       \\-> instance decoder (same structure, own weights) -> center head (C)
                                                                           \\-> offset head (2)

Every output is upsampled (bilinear, align_corners=False) to the input size. All norms are
plain ``nn.BatchNorm2d`` so ``nn.SyncBatchNorm.convert_sync_batchnorm`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bestie.models.backbones import Backbone, build_backbone, conv_bn_relu

__all__ = [
    "ASPP",
    "DepthwiseSeparableConv",
    "FusionBlock",
    "Decoder",
    "Head",
    "DecoderSpec",
    "BestieNet",
    "default_decoder_specs",
    "build_decoder",
    "set_bn_momentum",
    "resize",
]


class DepthwiseSeparableConv(nn.Sequential):
    """k x k depthwise conv + BN + ReLU, then 1x1 conv + BN + ReLU.

    [B, in, H, W] -> [B, out, H, W]
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                      groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            conv_bn_relu(in_channels, out_channels, kernel_size=1),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: [B, in, h, w] -> [B, out, h, w].

    Branches: 1x1 conv, one 3x3 conv per rate, and global image pooling; concatenated, then
    projected by a 1x1 conv (+ dropout). The pooling branch has a bias and no BatchNorm, so
    training with a batch of one image works (BN over 1x1 maps would see one value).
    """

    def __init__(
        self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, kernel_size=1)]
            + [conv_bn_relu(in_channels, out_channels, dilation=r) for r in rates]
        )
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            conv_bn_relu((len(rates) + 2) * out_channels, out_channels, kernel_size=1),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def fusion_conv(in_channels: int, out_channels: int, separable: bool) -> nn.Module:
    """Panoptic-DeepLab's 5x5 depthwise-separable conv, or a dense 3x3 conv + BN + ReLU.

    The dense form is the CPU default: PyTorch's CPU backward of a depthwise 5x5 conv is
    tens of times slower than a dense 3x3 conv of the same width (measured here), and on
    ~128 px inputs the larger receptive field buys nothing.
    """
    if separable:
        return DepthwiseSeparableConv(in_channels, out_channels)
    return conv_bn_relu(in_channels, out_channels, kernel_size=3)


class FusionBlock(nn.Module):
    """Fuse a coarse map with a finer low-level map (one Panoptic-DeepLab decoder step).

    The coarse map is upsampled to the low-level map's size, concatenated with the low-level
    map projected by a 1x1 conv (a few channels, so the fine detail does not swamp the
    semantics), and fused by a conv (:func:`fusion_conv`).
    [B, in, h, w], [B, low, H, W] -> [B, out, H, W]
    """

    def __init__(self, in_channels: int, low_level_channels: int, project_channels: int,
                 out_channels: int, separable: bool = True):
        super().__init__()
        self.project = conv_bn_relu(low_level_channels, project_channels, kernel_size=1)
        self.fuse = fusion_conv(in_channels + project_channels, out_channels, separable)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.project(low_level)], dim=1))


class Decoder(nn.Module):
    """ASPP on the deepest feature, then one :class:`FusionBlock` per low-level feature.

    Used twice in :class:`BestieNet`, with separate weights: the semantic and the instance
    decoder. ``features`` -> ``[B, channels, H/s, W/s]`` with s the stride of the last
    (finest) low-level feature.
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        in_feature: str,
        low_level_features: Sequence[str],
        project_channels: Sequence[int],
        channels: int,
        aspp_rates: Sequence[int],
        separable: bool = True,
    ):
        super().__init__()
        if len(project_channels) != len(low_level_features):
            raise ValueError(
                f"one project width per low-level feature: {list(low_level_features)} "
                f"vs {list(project_channels)}"
            )
        self.in_feature = in_feature
        self.low_level_features = tuple(low_level_features)
        self.aspp = ASPP(in_channels[in_feature], channels, aspp_rates)
        self.fusions = nn.ModuleList(
            FusionBlock(channels, in_channels[name], width, channels, separable)
            for name, width in zip(self.low_level_features, project_channels)
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = self.aspp(features[self.in_feature])
        for name, fusion in zip(self.low_level_features, self.fusions):
            x = fusion(x, features[name])
        return x


class Head(nn.Module):
    """A prediction head: 5x5 depthwise-separable conv, then a 1x1 conv to ``out_channels``.

    The 1x1 conv starts near zero (weights N(0, 1e-3), bias 0), as in Panoptic-DeepLab: an
    untrained center head predicts no centers, the offset head no displacement, the
    segmentation head uniform class probabilities.
    [B, in, h, w] -> [B, out_channels, h, w]
    """

    def __init__(self, in_channels: int, head_channels: int, out_channels: int, separable: bool = True):
        super().__init__()
        self.tower = fusion_conv(in_channels, head_channels, separable)
        self.predictor = nn.Conv2d(head_channels, out_channels, 1)
        nn.init.normal_(self.predictor.weight, 0.0, 1e-3)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.tower(x))


@dataclass(frozen=True)
class DecoderSpec:
    """Widths of one decoder branch and its heads.

    Attributes:
        channels: ASPP and fusion width.
        project_channels: 1x1 projection width of each low-level feature, coarse to fine.
        head_channels: width of the heads' conv.
        aspp_rates: ASPP dilation rates, in cells of the deepest feature.
        separable: 5x5 depthwise-separable fusion/head convs (Panoptic-DeepLab) or dense
            3x3 ones (fast on the CPU); see :func:`fusion_conv`.
    """

    channels: int
    project_channels: tuple[int, ...]
    head_channels: int
    aspp_rates: tuple[int, ...]
    separable: bool = True


def default_decoder_specs(backbone: Backbone) -> tuple[DecoderSpec, DecoderSpec]:
    """(semantic, instance) specs: Panoptic-DeepLab's widths, compact ones for a compact backbone.

    Panoptic-DeepLab's ASPP rates (6, 12, 18) are for output stride 16 and ~500 px crops;
    they scale with the deepest map's cell: (12, 24, 36) at stride 8, (3, 6, 9) at stride 32
    (its HRNet setting). The low-level projections halve from coarse to fine, the finest
    keeping 32 (semantic) and 16 (instance) channels, however many maps the backbone fuses.
    A compact backbone (the small one) sees ~128 px images at stride 8 (~16 cells), where
    rates (2, 4, 6) still fall inside the map.
    """
    if backbone.compact:
        rates = (2, 4, 6)
        return (DecoderSpec(64, (32, 16), 64, rates, separable=False),
                DecoderSpec(64, (32, 16), 32, rates, separable=False))
    stride = backbone.strides[backbone.deepest]
    rates = tuple(rate * 16 // stride for rate in (6, 12, 18))
    halving = [2 ** k for k in reversed(range(len(backbone.low_level)))]
    return (DecoderSpec(256, tuple(32 * f for f in halving), 256, rates),
            DecoderSpec(128, tuple(16 * f for f in halving), 32, rates))


def build_decoder(backbone: Backbone, spec: DecoderSpec) -> Decoder:
    """A :class:`Decoder` of ``spec``'s widths over ``backbone``'s deepest and low-level features."""
    return Decoder(backbone.out_channels, backbone.deepest, backbone.low_level,
                   spec.project_channels, spec.channels, spec.aspp_rates, spec.separable)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    """Set every BatchNorm's momentum (PyTorch convention); None leaves them as they are."""
    if momentum is None:
        return
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, K, h, w] -> [B, K, *size], bilinear (align_corners=False)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BestieNet(nn.Module):
    """Backbone + semantic decoder/segmentation head + instance decoder/center and offset heads.

    Args:
        num_classes: C, foreground classes.
        backbone: a name for :func:`build_backbone` or a :class:`Backbone` instance (e.g.
            ``ResNetBackbone(50, True, output_stride=8)``). The decoders' widths follow it
            (:func:`default_decoder_specs`) and fuse its ``low_level`` maps.
        pretrained: ImageNet initialisation of a named backbone.
        bn_momentum: momentum of every BatchNorm (PyTorch convention: weight of the new
            batch statistic; the published setting is 0.01); None keeps PyTorch's 0.1.

    forward(images [B, 3, H, W]) returns, all at H x W:
        "seg": [B, C+1, H, W] logits, channel 0 background, c+1 class c;
        "center": [B, C, H, W] class-wise center heatmaps (a regression of Gaussians, no sigmoid);
        "offset": [B, 2, H, W] in input pixels towards the instance center, channel 0 dy, 1 dx.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "small",
        pretrained: bool = False,
        *,
        bn_momentum: float | None = None,
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained)
        self.backbone = backbone
        semantic, instance = default_decoder_specs(backbone)
        self.semantic_decoder = build_decoder(backbone, semantic)
        self.instance_decoder = build_decoder(backbone, instance)
        self.seg_head = Head(semantic.channels, semantic.head_channels, num_classes + 1, semantic.separable)
        self.center_head = Head(instance.channels, instance.head_channels, num_classes, instance.separable)
        self.offset_head = Head(instance.channels, instance.head_channels, 2, instance.separable)
        set_bn_momentum(self, bn_momentum)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {"seg": [B, C+1, H, W], "center": [B, C, H, W],
        "offset": [B, 2, H, W]}"""
        size = images.shape[-2:]
        features = self.backbone(images)
        semantic = self.semantic_decoder(features)
        instance = self.instance_decoder(features)
        # The offset head regresses in decoder cells (small targets, as in Panoptic-DeepLab);
        # scaling each axis by its input/decoder size ratio turns them into input pixels.
        offset = self.offset_head(instance)
        cell = offset.new_tensor([size[0] / offset.shape[-2], size[1] / offset.shape[-1]])
        return {
            "seg": resize(self.seg_head(semantic), size),
            "center": resize(self.center_head(instance), size),
            "offset": resize(offset, size) * cell.view(1, 2, 1, 1),
        }
