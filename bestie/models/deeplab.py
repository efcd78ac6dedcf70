"""A DeepLab-style semantic segmentation network: the seed's second WSSS step (docs/method.md §2).

::

    images -> backbone -> decoder (ASPP + low-level fusions) -> segmentation head (C+1) -> upsample

The backbone, decoder and head are BESTIE's semantic branch (:mod:`~bestie.models.panoptic_deeplab`)
without the instance branch; :class:`EmbeddingNet` ends it in a per-pixel embedding instead
(AffinityNet's role, :mod:`bestie.affinity`).
"""

from __future__ import annotations

from torch import Tensor, nn

from bestie.models.backbones import Backbone, build_backbone
from bestie.models.panoptic_deeplab import Head, build_decoder, default_decoder_specs, resize, set_bn_momentum

__all__ = ["EmbeddingNet", "SegmentationNet", "semantic_branch"]


def semantic_branch(
    backbone: str | Backbone, pretrained: bool, out_channels: int
) -> tuple[Backbone, nn.Module, Head]:
    """BESTIE's semantic branch: the backbone (built by name, or as given), its semantic decoder
    and a head of ``out_channels``, built in that order."""
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, pretrained)
    spec, _ = default_decoder_specs(backbone)
    return backbone, build_decoder(backbone, spec), Head(spec.channels, spec.head_channels, out_channels, spec.separable)


class SegmentationNet(nn.Module):
    """Backbone + semantic decoder + segmentation head.

    Args:
        num_classes: C, foreground classes.
        backbone: a name for :func:`build_backbone` or a :class:`Backbone` instance.
        pretrained: ImageNet initialisation of a named backbone.
        bn_momentum: momentum of every BatchNorm; None keeps PyTorch's 0.1.

    forward(images [B, 3, H, W]) returns {"seg": [B, C+1, H, W] logits}, channel 0 background.
    """

    def __init__(
        self, num_classes: int, backbone: str | Backbone = "small", pretrained: bool = False,
        *, bn_momentum: float | None = None,
    ):
        super().__init__()
        self.backbone, self.decoder, self.seg_head = semantic_branch(backbone, pretrained, num_classes + 1)
        set_bn_momentum(self, bn_momentum)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"seg": resize(self.seg_head(self.decoder(self.backbone(images))), images.shape[-2:])}


class EmbeddingNet(nn.Module):
    """Backbone + semantic decoder + a head of ``dim`` channels: a feature vector per pixel, at
    the decoder's resolution, whose distances say which pixels belong together
    (:mod:`bestie.affinity`, AffinityNet's role in the WSSS step).

    forward(images [B, 3, H, W]) returns {"embedding": [B, dim, h, w]}, h x w the decoder's grid.
    """

    def __init__(
        self, dim: int, backbone: str | Backbone = "small", pretrained: bool = False,
        *, bn_momentum: float | None = None,
    ):
        super().__init__()
        self.backbone, self.decoder, self.embedding_head = semantic_branch(backbone, pretrained, dim)
        set_bn_momentum(self, bn_momentum)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"embedding": self.embedding_head(self.decoder(self.backbone(images)))}
