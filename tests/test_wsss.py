"""The WSSS maps: background threshold, the label rules, and the chain for one image."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bestie import wsss
from bestie.config import parse_params
from bestie.errors import BestieError
from bestie.structures import IGNORE

from .test_cam import FixedCAMs
from .test_edge_refine import _iou, _two_regions


# -- background and labels ---------------------------------------------------------------------


def test_background_threshold_and_label_values() -> None:
    cams = torch.tensor([[[0.9, 0.2, 0.5]], [[0.1, 0.25, 0.6]]])  # [K=2, 1, 3]
    scores = wsss.with_background(cams, 0.3)
    assert scores.shape == (3, 1, 3)
    assert torch.equal(scores[0], torch.full((1, 3), 0.3))
    # classes 4 and 1 -> label values 5 and 2; pixel 1 has no class above 0.3 -> background
    labels = wsss.threshold_labels(scores, torch.tensor([4, 1]))
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[5, 0, 2]]


def test_otsu_threshold_splits_two_modes() -> None:
    # One map: 70 % of pixels near 0.1, 30 % near 0.7; another: modes at 0.3 and 0.9.
    generator = torch.Generator().manual_seed(0)
    low, high = torch.rand(2, 700, generator=generator) * 0.1, torch.rand(2, 300, generator=generator) * 0.1
    maps = torch.stack([torch.cat([low[0] + 0.05, high[0] + 0.65]), torch.cat([low[1] + 0.25, high[1] + 0.85])])
    thresholds = wsss.otsu_thresholds(maps.view(2, 25, 40))
    # Any cut between the modes separates them best; the first such bin is taken.
    assert ((maps > thresholds[:, None]) == (maps > torch.tensor([[0.4], [0.6]]))).all()


def test_data_background_puts_each_class_threshold_at_its_otsu_value() -> None:
    # Class 0's map is high (object 0.9, rest 0.5); class 1's low (object 0.3, rest 0.02): a
    # fixed 0.2 calls all of class 0's image object; Otsu separates each map's own modes.
    cams = torch.full((2, 8, 8), 0.5)
    cams[0, :4] = 0.9
    cams[1] = 0.02
    cams[1, :, :2] = 0.3
    fixed = wsss.threshold_labels(wsss.with_background(cams, 0.2), torch.tensor([0, 1]))
    assert (fixed != 0).all()
    cams[1] = cams[1] * 0  # one class at a time, so arg max over classes does not mix them in
    cams[1, :, :2] = 0.3
    labels = wsss.threshold_labels(wsss.data_background(cams[:1], 0.2), torch.tensor([0]))
    assert (labels[:4] == 1).all() and (labels[4:] == 0).all()
    labels = wsss.threshold_labels(wsss.data_background(cams[1:], 0.2), torch.tensor([1]))
    assert (labels[:, :2] == 2).all() and (labels[:, 2:] == 0).all()


def test_unsure_pixels_become_ignore_not_background() -> None:
    probs = torch.tensor(
        [
            [[0.8, 0.40, 0.1]],  # background
            [[0.1, 0.35, 0.1]],  # class 3
            [[0.1, 0.25, 0.8]],  # class 0
        ]
    )
    labels = wsss.confident_labels(probs, torch.tensor([3, 0]), min_confidence=0.5)
    assert labels.tolist() == [[0, IGNORE, 1]]
    assert wsss.confident_labels(probs, torch.tensor([3, 0]), min_confidence=0.0).tolist() == [[0, 0, 1]]


def test_labels_reject_scores_of_the_wrong_depth() -> None:
    with pytest.raises(ValueError, match="K \\+ 1"):
        wsss.threshold_labels(torch.zeros(2, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="K \\+ 1"):
        wsss.confident_labels(torch.zeros(4, 4), torch.tensor([0]), 0.5)


# -- the chain for one image -------------------------------------------------------------------


def _labels(model: nn.Module, image: Tensor, classes: Tensor, **overrides) -> wsss.WSSSMaps:
    options = dict(
        scales=[1.0], flip=False, bg_threshold=0.2, background="fixed", method="pamr", texture_window=1, stride=1,
        dilations=[1, 2, 4], iterations=10, min_confidence=0.5,
    )
    return wsss.semantic_pseudo_labels(model, image, classes, **{**options, **overrides})


@pytest.mark.parametrize(
    "options",
    [
        dict(method="pamr"),
        dict(method="pamr", stride=2),  # refined on a 16 x 16 grid, resized back
        dict(method="crf", dilations=[1, 2, 4, 8], bg_threshold=0.3),
    ],
)
def test_pseudo_labels_of_one_image(options: dict) -> None:
    image, scores, truth = _two_regions()
    image = (image - 0.45) / 0.225  # the colour scale of an ImageNet-normalised image
    maps = torch.zeros(3, 32, 32)
    maps[1] = scores[1]  # class 1 is the blurry object; class 2 fires elsewhere but is absent
    maps[2] = 1.0
    out = _labels(FixedCAMs(maps), image, torch.tensor([1]), **options)
    assert out.cams.shape == (1, 32, 32) and out.raw.dtype == out.refined.dtype == torch.uint8
    assert set(out.raw.unique().tolist()) == {0, 2} and set(out.refined.unique().tolist()) <= {0, 2, IGNORE}
    assert _iou(out.refined == 2, truth) > _iou(out.raw == 2, truth) + 0.1


def test_otsu_background_follows_the_blurry_object_closer() -> None:
    image, scores, truth = _two_regions()
    image = (image - 0.45) / 0.225
    maps = torch.zeros(3, 32, 32)
    maps[1] = scores[1]
    fixed, otsu = (_labels(FixedCAMs(maps), image, torch.tensor([1]), background=b) for b in ("fixed", "otsu"))
    assert _iou(otsu.raw == 2, truth) > _iou(fixed.raw == 2, truth)
    assert _iou(otsu.refined == 2, truth) >= _iou(fixed.refined == 2, truth) - 0.01


def test_pseudo_labels_leave_unsure_pixels_to_ignore() -> None:
    image, scores, _ = _two_regions()
    model = FixedCAMs(scores[1:])
    loose = _labels(model, image, torch.tensor([0]), min_confidence=0.0)
    strict = _labels(model, image, torch.tensor([0]), min_confidence=0.75)
    assert not (loose.refined == IGNORE).any()
    # The unsure pixels are the background ones the blurry CAM reached, just past the edge.
    unsure_columns = (strict.refined == IGNORE).any(dim=0).nonzero().flatten()
    assert len(unsure_columns) > 0 and unsure_columns.min() >= 12 and unsure_columns.max() < 24
    unsure = strict.refined == IGNORE
    # Raising the bar turns pixels into ignore, never into background or another class.
    assert torch.equal(strict.refined[~unsure], loose.refined[~unsure])


def test_pseudo_labels_of_an_image_without_classes_are_background() -> None:
    out = _labels(FixedCAMs(torch.ones(2, 4, 4)), torch.zeros(3, 5, 7), torch.tensor([], dtype=torch.int64))
    assert out.cams.shape == (0, 5, 7)
    assert out.raw.shape == (5, 7) and not out.raw.any() and not out.refined.any()


def test_wsss_params_need_scales_and_dilations() -> None:
    with pytest.raises(BestieError, match="wsss.scales must not be empty"):
        parse_params({"wsss": {"scales": []}})
    with pytest.raises(BestieError, match=r"wsss.dilations\[1\] must be >= 1"):
        parse_params({"wsss": {"dilations": [1, 0]}})
