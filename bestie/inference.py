"""Running a trained BESTIE network on whole images (val, training images, user images).

Every use of a trained network (the ``evaluate`` and ``export_coco`` stages, ``bestie
predict``) goes through :func:`predict_instances` with one :class:`InferenceSettings`, the
numbers of the ``inference`` params (:func:`settings_from_params`). The ``evaluate`` stage
records the params it used beside its predictions (:data:`SETTINGS_FILE`, with the
checkpoint's digest), so ``bestie predict`` can predict exactly as the evaluation did
(:func:`recorded_inference`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bestie.checkpoint import load_checkpoint, load_weights
from bestie.config import InferenceParams, parse_section, to_dict
from bestie.data.manifest import ImageRecord
from bestie.data.transforms import normalize
from bestie.edge_refine import refine_scores
from bestie.errors import BestieError
from bestie.io import file_sha256, read_json
from bestie.models import BestieNet
from bestie.postprocess import merge_flip, postprocess
from bestie.structures import Instances

__all__ = [
    "SETTINGS_FILE", "InferenceSettings", "settings_from_params", "load_bestie", "refine_segmentation",
    "network_outputs", "predict_instances", "record_predictor", "settings_record", "RecordedInference", "recorded_inference",
]

SETTINGS_FILE = "inference.json"  # beside the evaluate stage's predictions


@dataclass(frozen=True)
class InferenceSettings:
    """How a trained network's outputs become instances."""

    flip: bool  # average the outputs of the image and its mirror image
    min_size: int  # smallest segmentation component kept, in pixels
    center_thresh: float  # center peaks must exceed it
    nms_kernel: int  # odd width of the center peak window
    refine_iterations: int  # segmentation refinement (:func:`refine_segmentation`); 0: off
    refine_texture_window: int
    refine_stride: int
    refine_dilations: Sequence[int]


def settings_from_params(params: InferenceParams) -> InferenceSettings:
    """The numbers of the ``inference`` params section."""
    refine = params.seg_refine
    return InferenceSettings(
        flip=params.flip, min_size=params.min_size, center_thresh=params.center_thresh,
        nms_kernel=params.nms_kernel, refine_iterations=refine.iterations,
        refine_texture_window=refine.texture_window, refine_stride=refine.stride,
        refine_dilations=tuple(refine.dilations),
    )


def load_bestie(path, device: torch.device, class_names=None) -> tuple[nn.Module, dict]:
    """The BESTIE network of a checkpoint, in eval mode on ``device``, and the checkpoint.

    ``class_names``, when given, must match the checkpoint's (a clear error otherwise).
    """
    checkpoint = load_checkpoint(path, kind="bestie", class_names=class_names)
    model = BestieNet(len(checkpoint["class_names"]), checkpoint["config"]["backbone"], pretrained=False)
    load_weights(model, checkpoint["model"], source=path)
    return model.to(device).eval(), checkpoint


def refine_segmentation(
    image: torch.Tensor,
    seg_logits: torch.Tensor,
    *,
    iterations: int,
    texture_window: int,
    stride: int,
    dilations: Sequence[int],
) -> torch.Tensor:
    """The network's class probabilities snapped to the edges of its input image: the
    ``wsss`` stage's pixel-adaptive refinement (:func:`bestie.edge_refine.refine_scores`),
    run on the network's softmax.

    Args:
        image: [3, H, W] the normalised input image (the refinement's guide).
        seg_logits: [C+1, H, W] segmentation logits of that image.
        iterations, texture_window, stride, dilations: of the refinement.
    Returns:
        [C+1, H, W] log-probabilities after refinement: logits for :func:`postprocess`,
        whose argmax and softmax are the refined labels and probabilities. ``seg_logits``
        unchanged when ``iterations`` is 0.
    """
    if iterations == 0:
        return seg_logits
    probs = refine_scores(
        image, seg_logits.float().softmax(dim=0), method="pamr", texture_window=texture_window,
        stride=stride, dilations=dilations, iterations=iterations,
    )
    return probs.clamp_(min=1e-8).log_()


def _padded_input(image: np.ndarray, multiple: int = 8) -> torch.Tensor:
    """Normalise and zero-pad (the mean colour, after normalisation) to [1, 3, H', W'], a
    multiple of the network's output stride."""
    height, width = image.shape[:2]
    batch = torch.zeros(1, 3, -(-height // multiple) * multiple, -(-width // multiple) * multiple)
    batch[0, :, :height, :width] = normalize(image)
    return batch


@torch.no_grad()
def network_outputs(
    model: nn.Module, image: np.ndarray, device: torch.device, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's outputs on one image, cut back to the image's own size.

    The image is run alone, padded only to the output stride: the network's global pooling
    (ASPP) would otherwise mix in padding or other images, and an image's instances would
    depend on what it was batched with. With ``flip`` the mirror image is run too and the
    two passes are averaged.

    Returns:
        (normalised image [3, H, W], seg logits [C+1, H, W], center [C, H, W],
        offset [2, H, W]), on ``device``.
    """
    height, width = image.shape[:2]
    batch = _padded_input(image).to(device)
    outputs = model(batch)
    if flip:
        outputs = merge_flip(outputs, model(batch.flip(-1)))
    return (batch[0, :, :height, :width], *(outputs[k][0, :, :height, :width] for k in ("seg", "center", "offset")))


@torch.no_grad()
def predict_instances(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    settings: InferenceSettings,
    points: np.ndarray | None = None,
) -> Instances:
    """Instances of one image at its own size: network outputs, segmentation refinement
    (:func:`refine_segmentation`), then post-processing.

    Args:
        model: a BestieNet in eval mode.
        image: [H, W, 3] uint8 RGB.
        settings: flip averaging, segmentation refinement and post-processing thresholds.
        points: None or [P, 3] (x, y, class) given points (point-guided inference).
    """
    height, width = image.shape[:2]
    normalized, seg, center, offset = network_outputs(model, image, device, settings.flip)
    seg = refine_segmentation(
        normalized, seg, iterations=settings.refine_iterations, texture_window=settings.refine_texture_window,
        stride=settings.refine_stride, dilations=settings.refine_dilations,
    )
    guide = None
    if points is not None:
        guide = (torch.from_numpy(points[:, :2].astype(np.float32)), torch.from_numpy(points[:, 2].astype(np.int64)))
    return postprocess(
        seg, center, offset, image_size=(height, width), min_size=settings.min_size,
        center_threshold=settings.center_thresh, nms_kernel=settings.nms_kernel, points=guide,
    )


def record_predictor(
    model: nn.Module, device: torch.device, settings: InferenceSettings, point_guided: bool
) -> Callable[[np.ndarray, ImageRecord], Instances]:
    """``(image, record) -> Instances`` by :func:`predict_instances`; with ``point_guided``, the
    record's given points guide the grouping."""

    def predict(image: np.ndarray, record: ImageRecord) -> Instances:
        return predict_instances(model, image, device, settings, points=record.points if point_guided else None)

    return predict


def settings_record(
    options: InferenceParams, checkpoint_path: str | os.PathLike, category_ids: Sequence[int]
) -> dict:
    """What the evaluate stage records beside its predictions: its settings, the dataset's
    category ids (index = class) and the checkpoint's SHA-256, so the record is only ever
    applied to the weights it was used with."""
    return {
        "checkpoint_sha256": file_sha256(checkpoint_path), "inference": to_dict(options),
        "category_ids": [int(i) for i in category_ids],
    }


class RecordedInference(NamedTuple):
    settings: InferenceParams
    category_ids: tuple[int, ...] | None  # None: recorded before category ids were


def recorded_inference(record_path: str | os.PathLike, checkpoint_path: str | os.PathLike) -> RecordedInference:
    """The inference settings and category ids a :func:`settings_record` file holds for this checkpoint.

    Raises:
        BestieError: the file is missing or malformed, or records another checkpoint.
    """
    record = read_json(record_path)
    if not isinstance(record, dict) or not {"checkpoint_sha256", "inference"} <= set(record):
        raise BestieError(f"{record_path}: not an inference settings record")
    if record["checkpoint_sha256"] != file_sha256(checkpoint_path):
        raise BestieError(f"{record_path}: records the settings of another checkpoint than {checkpoint_path}")
    category_ids = record.get("category_ids")
    if category_ids is not None and not (
        isinstance(category_ids, list) and all(type(i) is int for i in category_ids)
    ):
        raise BestieError(f"{record_path}: category_ids must be a list of integers")
    try:
        settings = parse_section("inference", record["inference"])
    except BestieError as err:
        raise BestieError(f"{record_path}: {err}") from None
    return RecordedInference(settings, None if category_ids is None else tuple(category_ids))
