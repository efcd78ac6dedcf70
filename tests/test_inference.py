"""Inference on whole images: the segmentation refinement and the prediction of one image."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bestie.config import InferenceParams
from bestie.inference import predict_instances, refine_segmentation, settings_from_params
from bestie.models import BestieNet

SIZE = 32


def _two_tone_image() -> torch.Tensor:
    """[3, 32, 32]: dark left half (columns < 16), bright right half."""
    image = torch.full((3, SIZE, SIZE), -1.0)
    image[:, :, SIZE // 2 :] = 1.0
    return image


def _logits_with_edge_at(column: int) -> torch.Tensor:
    """[2, 32, 32] unsure logits: class 1 left of ``column``, background right of it."""
    logits = torch.zeros(2, SIZE, SIZE)
    logits[1, :, :column] = 0.5
    logits[0, :, column:] = 0.5
    return logits


def test_refinement_moves_a_misplaced_boundary_to_the_image_edge():
    # The network's boundary lies 4 px right of the image's edge: PAMR averages each pixel
    # with its like-coloured neighbours, which are mostly background on the bright side.
    logits = _logits_with_edge_at(SIZE // 2 + 4)
    options = dict(iterations=10, stride=1, texture_window=1, dilations=[1, 2, 4, 8, 12, 16])  # guide: colour alone
    refined = refine_segmentation(_two_tone_image(), logits, **options)
    labels = refined.argmax(dim=0)
    assert labels[:, : SIZE // 2].eq(1).all()
    assert labels[:, SIZE // 2 :].eq(0).all()


def test_refinement_returns_log_probabilities_of_the_input_shape():
    logits = torch.randn(4, 20, 28, generator=torch.Generator().manual_seed(0))
    image = torch.randn(3, 20, 28, generator=torch.Generator().manual_seed(1))
    refined = refine_segmentation(
        image, logits, iterations=3, texture_window=5, stride=2, dilations=[1, 2, 4, 8, 12, 16]
    )
    assert refined.shape == logits.shape
    torch.testing.assert_close(refined.exp().sum(dim=0), torch.ones(20, 28))


def test_zero_iterations_leave_the_logits_untouched():
    logits = _logits_with_edge_at(20)
    unrefined = refine_segmentation(_two_tone_image(), logits, iterations=0, texture_window=5, stride=2, dilations=[1])
    assert unrefined is logits


def test_prediction_is_refined_and_at_the_image_size():
    torch.manual_seed(0)
    model = BestieNet(num_classes=2, backbone="small").eval()
    image = np.random.default_rng(0).integers(0, 255, (33, 30, 3), dtype=np.uint8)  # padded to 40 x 32
    plain = settings_from_params(InferenceParams(min_size=1, center_thresh=0.0))
    plain = dataclasses.replace(plain, refine_iterations=0)
    refined = dataclasses.replace(plain, refine_iterations=5)
    device = torch.device("cpu")
    result = predict_instances(model, image, device, refined)
    assert result.masks.shape[1:] == image.shape[:2]
    # The refinement is applied: the untouched logits give other instances.
    unrefined = predict_instances(model, image, device, plain)
    assert unrefined.masks.shape != result.masks.shape or not np.array_equal(unrefined.masks, result.masks)


def test_point_guided_prediction_uses_the_given_points():
    torch.manual_seed(0)
    model = BestieNet(num_classes=2, backbone="small").eval()
    image = np.random.default_rng(1).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    options = settings_from_params(InferenceParams(min_size=1))
    points = np.array([[5.0, 5.0, 1], [30.0, 20.0, 1]], dtype=np.float32)
    guided = predict_instances(model, image, torch.device("cpu"), options, points=points)
    # At most one instance a point, of the point's class.
    assert len(guided) <= 2 and set(guided.classes.tolist()) <= {1}


def test_settings_are_the_numbers_of_the_inference_params():
    params = InferenceParams(flip=False, center_thresh=0.2, nms_kernel=21, min_size=30)
    settings = settings_from_params(params)
    assert (settings.flip, settings.center_thresh, settings.nms_kernel, settings.min_size) == (False, 0.2, 21, 30)
    refine = params.seg_refine
    assert (settings.refine_iterations, settings.refine_texture_window, settings.refine_stride) == (
        refine.iterations, refine.texture_window, refine.stride
    )
    assert list(settings.refine_dilations) == refine.dilations
