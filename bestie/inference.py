"""Running a trained BESTIE network on whole images (val, training images, user images)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bestie.cam import refine_scores, texture_guide
from bestie.checkpoint import load_checkpoint
from bestie.config import EvaluateParams, SegRefineParams
from bestie.data.transforms import normalize
from bestie.models import BestieNet
from bestie.postprocess import Instances, merge_flip, postprocess

__all__ = ["load_bestie", "refine_segmentation", "network_outputs", "predict_batch", "predict_instances"]


def load_bestie(path, device: torch.device, class_names=None) -> tuple[nn.Module, dict]:
    """The BESTIE network of a checkpoint, in eval mode on ``device``, and the checkpoint.

    ``class_names``, when given, must match the checkpoint's (a clear error otherwise).
    """
    checkpoint = load_checkpoint(path, kind="bestie", class_names=class_names)
    model = BestieNet(len(checkpoint["class_names"]), checkpoint["config"]["backbone"], pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def refine_segmentation(image: torch.Tensor, seg_logits: torch.Tensor, options: SegRefineParams) -> torch.Tensor:
    """The network's class probabilities snapped to the edges of its input image.

    Args:
        image: [3, H, W] the normalised input image (the refinement's guide).
        seg_logits: [C+1, H, W] segmentation logits of that image.
    Returns:
        [C+1, H, W] log-probabilities after refinement: logits for :func:`postprocess`,
        whose argmax and softmax are the refined labels and probabilities. ``seg_logits``
        unchanged when ``options.iterations`` is 0.
    """
    if options.iterations == 0:
        return seg_logits
    probs = refine_scores(
        texture_guide(image, options.texture_window), seg_logits.float().softmax(dim=0),
        method="pamr", stride=options.stride, dilations=options.dilations, iterations=options.iterations,
    )
    return probs.clamp(min=1e-8).log()


def _pad_batch(images: list[np.ndarray], multiple: int = 8) -> torch.Tensor:
    """Normalise and zero-pad (the mean colour, after normalisation) to one [B, 3, H, W] batch."""
    height = -(-max(im.shape[0] for im in images) // multiple) * multiple
    width = -(-max(im.shape[1] for im in images) // multiple) * multiple
    batch = torch.zeros(len(images), 3, height, width)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[0], : image.shape[1]] = normalize(image)
    return batch


@torch.no_grad()
def network_outputs(
    model: nn.Module, images: list[np.ndarray], device: torch.device, flip: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The network's outputs on each image, cut back to the image's own size.

    The images are normalised and padded into one batch (and its mirror image when
    ``flip``, the two passes averaged) and run through ``model`` once.

    Returns:
        per image of size (H, W): (normalised image [3, H, W], seg logits [C+1, H, W],
        center [C, H, W], offset [2, H, W]), on ``device``.
    """
    batch = _pad_batch(images).to(device)
    outputs = model(batch)
    if flip:
        outputs = merge_flip(outputs, model(batch.flip(-1)))
    return [
        (batch[i, :, :h, :w], *(outputs[k][i, :, :h, :w] for k in ("seg", "center", "offset")))
        for i, (h, w) in enumerate(image.shape[:2] for image in images)
    ]


@torch.no_grad()
def predict_batch(
    model: nn.Module,
    images: list[np.ndarray],
    device: torch.device,
    options: EvaluateParams,
    points: list[np.ndarray | None] | None = None,
) -> list[Instances]:
    """Instances of several images of any sizes, each at its own size.

    Each image's outputs (:func:`network_outputs`) are refined (``options.seg_refine``,
    :func:`refine_segmentation`) and post-processed.

    Args:
        model: a BestieNet in eval mode.
        images: [H_i, W_i, 3] uint8 RGB.
        options: flip averaging and post-processing thresholds.
        points: per image, None or [P, 3] (x, y, class) given points (point-guided inference).
    """
    results = []
    outputs = network_outputs(model, images, device, options.flip)
    for i, (image, (normalized, seg, center, offset)) in enumerate(zip(images, outputs)):
        height, width = image.shape[:2]
        seg = refine_segmentation(normalized, seg, options.seg_refine)
        guide = None
        if points is not None and points[i] is not None:
            given = points[i]
            guide = (torch.from_numpy(given[:, :2].astype(np.float32)), torch.from_numpy(given[:, 2].astype(np.int64)))
        results.append(postprocess(
            seg, center, offset, image_size=(height, width), min_size=options.min_size,
            center_threshold=options.center_thresh, nms_kernel=options.nms_kernel, points=guide,
        ))
    return results


def predict_instances(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    options: EvaluateParams,
    points: np.ndarray | None = None,
) -> Instances:
    """Instances of one image ([H, W, 3] uint8) at its own size; see :func:`predict_batch`."""
    return predict_batch(model, [image], device, options, None if points is None else [points])[0]
