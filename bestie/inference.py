"""Running a trained BESTIE network on whole images (val, training images, user images)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bestie.checkpoint import load_checkpoint
from bestie.config import EvaluateParams
from bestie.data.transforms import normalize
from bestie.models import BestieNet
from bestie.postprocess import Instances, merge_flip, postprocess

__all__ = ["load_bestie", "predict_instances"]


def load_bestie(path, device: torch.device, class_names=None) -> tuple[nn.Module, dict]:
    """The BESTIE network of a checkpoint, in eval mode on ``device``, and the checkpoint.

    ``class_names``, when given, must match the checkpoint's (a clear error otherwise).
    """
    checkpoint = load_checkpoint(path, kind="bestie", class_names=class_names)
    model = BestieNet(len(checkpoint["class_names"]), checkpoint["config"]["backbone"], pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


@torch.no_grad()
def predict_instances(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    options: EvaluateParams,
    points: np.ndarray | None = None,
) -> Instances:
    """Instances of one image at its own size.

    Args:
        model: a BestieNet in eval mode.
        image: [H, W, 3] uint8 RGB.
        options: flip averaging and post-processing thresholds.
        points: optional [P, 3] (x, y, class) given points for point-guided inference.
    """
    height, width = image.shape[:2]
    batch = normalize(image)[None].to(device)
    if options.flip:
        both = model(torch.cat([batch, batch.flip(-1)]))
        outputs = merge_flip({k: v[:1] for k, v in both.items()}, {k: v[1:] for k, v in both.items()})
    else:
        outputs = model(batch)
    guide = None
    if points is not None:
        guide = (torch.from_numpy(points[:, :2].astype(np.float32)), torch.from_numpy(points[:, 2].astype(np.int64)))
    return postprocess(
        outputs["seg"][0], outputs["center"][0], outputs["offset"][0],
        image_size=(height, width), min_size=options.min_size,
        center_threshold=options.center_thresh, nms_kernel=options.nms_kernel, points=guide,
    )
