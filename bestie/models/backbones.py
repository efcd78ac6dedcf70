"""Backbones: images -> a dict of named feature maps with declared channels and strides.

Every backbone takes RGB images normalised with the ImageNet mean and std, ``[B, 3, H, W]``,
and returns ``{name: [B, out_channels[name], ceil(H / strides[name]), ceil(W / strides[name])]}``
(up to the rounding of strided convolutions). Two attributes tell a head which maps to use:

- ``deepest``: the semantically strongest map (ASPP input, PAM classifier input);
- ``low_level``: finer maps a Panoptic-DeepLab decoder fuses, coarse to fine.

Feature names follow detectron2: ``res<k>`` is the output of residual stage k, whose nominal
stride is 2**k before dilation replaces striding (VGG maps are named ``conv<k>`` likewise).

============  =====================================  ========================  ==============
name          features (stride)                      deepest / low_level       ImageNet init
============  =====================================  ========================  ==============
small         res2 (4), res3 (8), res4, res5 (8)      res5 / res3, res2         no
resnet50/101  res2 (4), res3 (8), res4, res5 (16)     res5 / res3, res2         yes
vgg16         conv3 (4), conv4 (8), conv5 (8)         conv5 / conv4, conv3      yes
hrnet_w32/48  res2 (4), res3 (8), res4 (16), res5 (32) res5 / res4, res3, res2  yes (timm)
============  =====================================  ========================  ==============

:data:`BACKBONES` maps each name to its builder; params validation reads its names, so adding
a backbone is its class and one line there.
"""

from __future__ import annotations

import os
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
import torchvision
from huggingface_hub import constants as hub_constants
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from bestie.errors import BestieError

__all__ = [
    "Backbone",
    "SmallBackbone",
    "ResNetBackbone",
    "VGG16Backbone",
    "HRNetBackbone",
    "BACKBONES",
    "SMALL_WIDTH",
    "build_backbone",
    "load_imagenet_weights",
]


class Backbone(nn.Module):
    """Base class: declares the named feature maps ``forward`` returns.

    Attributes:
        out_channels: feature name -> number of channels.
        strides: feature name -> input pixels per feature cell.
        deepest: name of the semantically strongest (coarsest) map.
        low_level: names of finer maps for decoder fusion, coarse to fine.
        compact: sized for ~128 px images on a CPU, so the heads built on it are compact too
            (:func:`~bestie.models.panoptic_deeplab.default_decoder_specs`).
    """

    out_channels: dict[str, int]
    strides: dict[str, int]
    deepest: str
    low_level: tuple[str, ...]
    compact: bool = False

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def load_imagenet_weights(
    module: nn.Module,
    weights: WeightsEnum,
    arch: str,
    select: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda state: state,
) -> None:
    """Load torchvision ImageNet ``weights`` of ``arch`` into ``module``.

    ``select`` maps the downloaded state dict onto ``module``'s keys. A failed download is a
    one-line :class:`BestieError` saying what to do; only the fetch is guarded: a state-dict
    mismatch is a bug and keeps its traceback.
    """
    # URLError, HTTPError and timeouts are OSErrors; a hash mismatch is a RuntimeError.
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:
        filename = os.path.basename(urlparse(weights.url).path)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise _weights_unavailable(arch, err, f"put {filename} in {cache}") from err
    module.load_state_dict(select(state))


def _weights_unavailable(arch: str, err: Exception, remedy: str) -> BestieError:
    """The one-line error for ImageNet weights that could not be fetched; ``remedy``: how to
    provide them by hand."""
    reason = getattr(err, "reason", None) or err
    return BestieError(
        f"could not download the ImageNet weights of {arch} ({reason}): set `pretrained: false` "
        f"to train from scratch, or {remedy}"
    )


# --------------------------------------------------------------------------------------------
# small: a compact from-scratch CNN for CPU-sized data
# --------------------------------------------------------------------------------------------

SMALL_WIDTH = 32  # the small backbone's first-stage channels where none are given


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding for odd kernels."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) that, unlike torchvision's, supports dilation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride, dilation, dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, H, W] -> [B, out, H / stride, W / stride]"""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class SmallBackbone(Backbone):
    """A compact residual CNN, trained from scratch: output stride 8, ~1 M parameters at width 32.

    stem (stride 2) -> res2 (stride 4, ``width``) -> res3 (stride 8, 2 ``width``) ->
    res4 (dilation 2, 4 ``width``) -> res5 (dilation 4, 4 ``width``). Dilation instead of
    striding in the last two stages keeps a fine (stride 8) grid for centers and offsets while
    the theoretical receptive field (~320 px) still covers whole objects in ~128 px images.
    """

    compact = True

    def __init__(self, width: int = SMALL_WIDTH):
        super().__init__()
        if width < 8 or width % 2:
            raise ValueError(f"width must be an even number >= 8, got {width}")
        w = width
        self.stem = nn.Sequential(conv_bn_relu(3, w // 2, stride=2), conv_bn_relu(w // 2, w))
        self.res2 = BasicBlock(w, w, stride=2)
        self.res3 = nn.Sequential(BasicBlock(w, 2 * w, stride=2), BasicBlock(2 * w, 2 * w))
        self.res4 = nn.Sequential(
            BasicBlock(2 * w, 4 * w, dilation=2), BasicBlock(4 * w, 4 * w, dilation=2)
        )
        self.res5 = BasicBlock(4 * w, 4 * w, dilation=4)
        self.out_channels = {"res2": w, "res3": 2 * w, "res4": 4 * w, "res5": 4 * w}
        self.strides = {"res2": 4, "res3": 8, "res4": 8, "res5": 8}
        self.deepest = "res5"
        self.low_level = ("res3", "res2")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {res2: [B, w, H/4, W/4], res3: [B, 2w, H/8, W/8],
        res4, res5: [B, 4w, H/8, W/8]} (w = width)."""
        res2 = self.res2(self.stem(images))
        res3 = self.res3(res2)
        res4 = self.res4(res3)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": self.res5(res4)}


# --------------------------------------------------------------------------------------------
# ResNet-50/101 (torchvision), dilated
# --------------------------------------------------------------------------------------------

_RESNETS = {
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}
# output stride -> torchvision's replace_stride_with_dilation for (layer2, layer3, layer4)
_RESNET_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101 without its classifier, dilated to ``output_stride`` (8, 16, 32).

    Features: res2 (256 ch, stride 4), res3 (512, 8), res4 (1024, min(16, os)), res5 (2048, os).
    """

    def __init__(self, depth: int = 50, pretrained: bool = False, output_stride: int = 16):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"depth must be one of {sorted(_RESNETS)}, got {depth}")
        if output_stride not in _RESNET_DILATION:
            raise ValueError(
                f"output_stride must be one of {sorted(_RESNET_DILATION)}, got {output_stride}"
            )
        build, weights = _RESNETS[depth]
        net = build(weights=None, replace_stride_with_dilation=_RESNET_DILATION[output_stride])
        if pretrained:
            load_imagenet_weights(net, weights, f"resnet{depth}")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.res2, self.res3, self.res4, self.res5 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
        self.strides = {"res2": 4, "res3": 8, "res4": min(16, output_stride), "res5": output_stride}
        self.deepest = "res5"
        self.low_level = ("res3", "res2")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {res2: [B, 256, H/4, W/4], ..., res5: [B, 2048, H/os, W/os]}"""
        res2 = self.res2(self.stem(images))
        res3 = self.res3(res2)
        res4 = self.res4(res3)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": self.res5(res4)}


# --------------------------------------------------------------------------------------------
# VGG-16 (torchvision weights), the published PAM classifier's backbone
# --------------------------------------------------------------------------------------------

_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16Backbone(Backbone):
    """VGG-16 conv layers with conv5 dilated (2) and pool5 dropped; stride 8 by default.

    Output stride 8 is the published PAM layout: pool4 becomes a 3x3 stride-1 max-pool, so
    conv5 keeps stride 8 (its dilation restores the receptive field its weights expect).
    Output stride 16 keeps pool4 as a stride-2 pool instead. Module indices inside
    ``features`` match torchvision's ``vgg16().features``, so ImageNet weights load as is.

    Features: conv3 (256 ch, stride 4), conv4 (512, 8), conv5 (512, ``output_stride``).
    """

    def __init__(self, pretrained: bool = False, output_stride: int = 8):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        layers: list[nn.Module] = []
        in_channels = 3
        for stage, widths in enumerate(_VGG16_STAGES, start=1):
            dilation = 2 if stage == 5 else 1
            for width in widths:
                layers += [
                    nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation),
                    nn.ReLU(inplace=True),
                ]
                in_channels = width
            if stage <= 3 or (stage == 4 and output_stride == 16):
                layers.append(nn.MaxPool2d(2, 2))
            elif stage == 4:
                layers.append(nn.MaxPool2d(3, 1, padding=1))
            # stage 5: no pooling
        features = nn.Sequential(*layers)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if pretrained:
            load_imagenet_weights(
                features,
                torchvision.models.VGG16_Weights.IMAGENET1K_V1,
                "vgg16",
                select=lambda state: {
                    k.removeprefix("features."): v
                    for k, v in state.items()
                    if k.startswith("features.")
                },
            )
        # torchvision indices: conv3_3's ReLU is 15, conv4_3's 22, conv5_3's 29.
        self.conv3, self.conv4, self.conv5 = features[:16], features[16:23], features[23:]
        self.out_channels = {"conv3": 256, "conv4": 512, "conv5": 512}
        self.strides = {"conv3": 4, "conv4": 8, "conv5": output_stride}
        self.deepest = "conv5"
        self.low_level = ("conv4", "conv3")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {conv3: [B, 256, H/4, W/4], conv4: [B, 512, H/8, W/8],
        conv5: [B, 512, H/os, W/os]}"""
        conv3 = self.conv3(images)
        conv4 = self.conv4(conv3)
        return {"conv3": conv3, "conv4": conv4, "conv5": self.conv5(conv4)}


# --------------------------------------------------------------------------------------------
# HRNet-W32/W48 (timm), the published network's backbone
# --------------------------------------------------------------------------------------------


class HRNetBackbone(Backbone):
    """timm's HRNet (``hrnet_w32``, ``hrnet_w48``): the four branches of its last stage.

    HRNet keeps one branch per resolution through the whole network; its last stage outputs
    them all, at strides 4, 8, 16 and 32, with W, 2W, 4W and 8W channels (W = 32 or 48).
    They are named like ResNet stages (res2 .. res5) and all four feed the decoder, as in
    Panoptic-DeepLab's HRNet: a branch nothing reads would leave parameters without a
    gradient, which DDP refuses. Channels and strides are timm's ``feature_info``.

    ImageNet weights come through timm's own loader (the Hugging Face hub).
    """

    def __init__(self, name: str = "hrnet_w48", pretrained: bool = False):
        super().__init__()
        # feature_location="": the branches themselves, not timm's channel-increasing
        # classification head; out_indices 1-4 leave out the stride-2 stem map.
        options = dict(features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
        try:
            self.body = timm.create_model(name, pretrained=pretrained, **options)
        except OSError as err:  # the hub's download and offline errors; a bad state dict is not one
            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            raise _weights_unavailable(
                name, err, f"run `hf download {repo}` where there is internet and copy the folder "
                f"models--{repo.replace('/', '--')} it makes into {hub_constants.HF_HUB_CACHE}"
            ) from err
        names = [f"res{k}" for k in range(2, 6)]
        self.out_channels = dict(zip(names, self.body.feature_info.channels()))
        self.strides = dict(zip(names, self.body.feature_info.reduction()))
        self.deepest = "res5"
        self.low_level = ("res4", "res3", "res2")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {res2: [B, W, H/4, W/4], res3: [B, 2W, H/8, W/8],
        res4: [B, 4W, H/16, W/16], res5: [B, 8W, H/32, W/32]} (W = 32 or 48; sizes rounded up)"""
        height, width = images.shape[-2:]
        # HRNet's fusions upsample by exact powers of two, so its input sides must divide by 32:
        # pad with 0 (the mean colour after normalisation), then cut each map back to the cells
        # that cover the image.
        multiple = max(self.strides.values())
        images = F.pad(images, (0, -width % multiple, 0, -height % multiple))
        return {
            name: fmap[..., : -(-height // self.strides[name]), : -(-width // self.strides[name])]
            for name, fmap in zip(self.out_channels, self.body(images))
        }


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def _small(pretrained: bool, width: int) -> Backbone:
    if pretrained:
        raise BestieError(
            "the 'small' backbone has no ImageNet weights: set `pretrained: false`, or choose "
            "another backbone"
        )
    return SmallBackbone(width)


# name -> builder(pretrained, width). ``width`` sizes the backbones built to any width (small);
# the torchvision and timm layouts have fixed widths and ignore it.
BACKBONES: dict[str, Callable[[bool, int], Backbone]] = {
    "small": _small,
    "resnet50": lambda pretrained, width: ResNetBackbone(50, pretrained),
    "resnet101": lambda pretrained, width: ResNetBackbone(101, pretrained),
    "vgg16": lambda pretrained, width: VGG16Backbone(pretrained),
    "hrnet_w32": lambda pretrained, width: HRNetBackbone("hrnet_w32", pretrained),
    "hrnet_w48": lambda pretrained, width: HRNetBackbone("hrnet_w48", pretrained),
}


def build_backbone(name: str, pretrained: bool = False, width: int = SMALL_WIDTH) -> Backbone:
    """The backbone :data:`BACKBONES` names, on ImageNet weights if ``pretrained``.

    ``width``: channels of the first stage of a backbone built to any width (small).
    """
    if name not in BACKBONES:
        raise BestieError(f"backbone: unknown name {name!r} (valid: {', '.join(BACKBONES)})")
    return BACKBONES[name](pretrained, width)
