"""Mask R-CNN refinement (docs/method.md §8): torchvision's Mask R-CNN trained on BESTIE's pseudo labels.

Two backbones (``maskrcnn.backbone``):

- ``small_fpn``: a small residual CNN trained from scratch (:func:`small_resnet`, built from
  the blocks of :mod:`bestie.models.backbones`) under a 32-channel FPN at strides 4, 8, 16 and
  32, with box and mask heads slimmed to that width. Sized for ~100-160 px images holding
  objects of a few hundred to ~1,500 px: one CPU trains it in minutes.
- ``resnet50_fpn``: torchvision's ResNet-50-FPN Mask R-CNN, optionally on ImageNet weights
  (then with frozen BatchNorm and the first stages frozen, torchvision's recipe).

Both take ``[3, H, W]`` float images in [0, 1] (the model normalises and resizes them itself)
and return masks at the input size; :func:`predict_maskrcnn` turns them into
:class:`~bestie.structures.Instances`. Labels in targets and outputs are ``class + 1``: 0 is
background, which makes them the COCO ``category_id``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops

from bestie.config import MaskRCNNParams
from bestie.data.coco_dataset import to_tensor
from bestie.models.backbones import BasicBlock, conv_bn_relu, load_imagenet_weights
from bestie.structures import Instances

__all__ = [
    "MASKRCNN_BACKBONES",
    "build_maskrcnn",
    "predict_maskrcnn",
    "MaskRCNNLosses",
    "LOSS_NAMES",
]

MASKRCNN_BACKBONES = ("small_fpn", "resnet50_fpn")

# torchvision's loss keys -> short names for logs.
LOSS_NAMES = {
    "loss_classifier": "classifier",
    "loss_box_reg": "box_reg",
    "loss_mask": "mask",
    "loss_objectness": "objectness",
    "loss_rpn_box_reg": "rpn_box_reg",
}

SMALL_WIDTH = 32  # channels of the small ResNet's first stage
SMALL_FPN_CHANNELS = 32
SMALL_BOX_REPRESENTATION = 256

# Proposal and RoI budgets for images of ~10^4 px holding a handful of objects; torchvision's
# defaults (2000 proposals, 512 RoIs an image) are sized for 800 px COCO images, and on the CPU
# RPN NMS and RoIAlign's backward pass grow with them.
_SMALL_IMAGE_BUDGETS = dict(
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=250,
    rpn_pre_nms_top_n_test=500,
    rpn_post_nms_top_n_test=250,
    box_batch_size_per_image=64,
)


def small_resnet(width: int = SMALL_WIDTH) -> nn.Sequential:
    """A from-scratch residual CNN with real strides, for an FPN: children in forward order.

    stem (stride 2, ``width``) -> res2 (stride 4, ``width``) -> res3 (stride 8, 2 ``width``) ->
    res4 (stride 16, 4 ``width``). :class:`~bestie.models.backbones.SmallBackbone` keeps stride
    8 with dilation for dense maps; a detector wants the pyramid instead, and the coarser deep
    stages cost a quarter as much.
    """
    w = width
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv_bn_relu(3, w // 2, stride=2), conv_bn_relu(w // 2, w)),
        res2=BasicBlock(w, w, stride=2),
        res3=nn.Sequential(BasicBlock(w, 2 * w, stride=2), BasicBlock(2 * w, 2 * w)),
        res4=nn.Sequential(BasicBlock(2 * w, 4 * w, stride=2), BasicBlock(4 * w, 4 * w)),
    ))


def _anchor_generator(smallest: int, levels: int) -> AnchorGenerator:
    """One size per FPN level, doubling from ``smallest``; aspect ratios 0.5, 1, 2 everywhere."""
    sizes = tuple((smallest * 2**level,) for level in range(levels))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)


def _small_fpn(num_classes: int, params: MaskRCNNParams) -> MaskRCNN:
    channels, width = SMALL_FPN_CHANNELS, SMALL_WIDTH
    levels = {"res2": "0", "res3": "1", "res4": "2"}  # strides 4, 8, 16; FPN adds "pool" (32)
    backbone = BackboneWithFPN(small_resnet(width), levels, [width, 2 * width, 4 * width], channels)
    anchors = _anchor_generator(params.anchor_size, levels=len(levels) + 1)
    features = list(levels.values())
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(features, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, SMALL_BOX_REPRESENTATION),
        box_predictor=FastRCNNPredictor(SMALL_BOX_REPRESENTATION, num_classes + 1),
        mask_roi_pool=MultiScaleRoIAlign(features, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [channels] * 4, dilation=1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes + 1),
        **_common_options(params),
    )


def _resnet50_fpn(num_classes: int, params: MaskRCNNParams, download: bool) -> MaskRCNN:
    # torchvision's recipe: pretrained backbones keep frozen BatchNorm and train only the last
    # three stages; from scratch everything trains, with ordinary BatchNorm.
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=misc_nn_ops.FrozenBatchNorm2d if params.pretrained else nn.BatchNorm2d,
        trainable_layers=3 if params.pretrained else 5,
    )
    if params.pretrained and download:
        load_imagenet_weights(
            backbone.body, ResNet50_Weights.IMAGENET1K_V1, "resnet50",
            select=lambda state: {k: v for k, v in state.items() if not k.startswith("fc.")},
        )
    return MaskRCNN(
        backbone,
        num_classes=num_classes + 1,
        rpn_anchor_generator=_anchor_generator(params.anchor_size, levels=5),
        **_common_options(params),
    )


def _common_options(params: MaskRCNNParams) -> dict:
    return dict(
        min_size=tuple(params.min_size),
        max_size=params.max_size,
        box_score_thresh=params.score_thresh,
        box_detections_per_img=params.detections_per_image,
        **_SMALL_IMAGE_BUDGETS,
    )


def build_maskrcnn(
    num_classes: int,
    params: MaskRCNNParams,
    *,
    download: bool = True,
) -> MaskRCNN:
    """A Mask R-CNN for ``num_classes`` object classes (+ background), in train mode.

    With ``params.pretrained`` (``resnet50_fpn`` only) the backbone takes torchvision's
    ImageNet weights, downloaded unless ``download`` is false (the architecture is the same,
    for loading a checkpoint); a failed download is a :class:`BestieError`.
    """
    if params.backbone == "small_fpn":
        return _small_fpn(num_classes, params)
    if params.backbone == "resnet50_fpn":
        return _resnet50_fpn(num_classes, params, download)
    raise ValueError(f"unknown Mask R-CNN backbone {params.backbone!r} (one of {MASKRCNN_BACKBONES})")


@torch.no_grad()
def predict_maskrcnn(
    model: MaskRCNN, image: np.ndarray, device: torch.device, mask_thresh: float = 0.5
) -> Instances:
    """Instances of one [H, W, 3] uint8 image at its own size, sorted by score.

    ``model`` must be in eval mode; its soft masks are binarised at ``mask_thresh``.
    """
    (output,) = model([to_tensor(image).to(device)])
    order = torch.argsort(output["scores"], descending=True)
    masks = output["masks"][order, 0] >= mask_thresh  # [N, H, W]
    return Instances(
        masks=masks.cpu().numpy(),
        classes=(output["labels"][order] - 1).cpu().numpy().astype(np.int64),
        scores=output["scores"][order].cpu().numpy().astype(np.float32),
    )


class MaskRCNNLosses(nn.Module):
    """Mask R-CNN as :func:`bestie.training.train` trains it: ``((images, targets), iteration) -> losses``.

    torchvision's model returns its five loss terms in training (by their short names here,
    :data:`LOSS_NAMES`); the loss minimised is their sum.
    """

    def __init__(self, model: MaskRCNN):
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[list[torch.Tensor], list[dict]], iteration: int) -> dict[str, torch.Tensor]:
        images, targets = batch
        losses = self.model(images, targets)
        return {"loss": sum(losses.values()), **{LOSS_NAMES[k]: v for k, v in losses.items()}}
