"""CAMs, background threshold, edge-aware refinement and the label rules of the WSSS maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from bestie import cam
from bestie.cam import IGNORE
from bestie.config import WSSSParams, parse_params
from bestie.errors import BestieError


class FixedCAMs(nn.Module):
    """A stand-in classifier whose class maps are given: the input only sets their size.

    ``cams`` is ``[C, h, w]`` for an input of size (h, w); inputs of another size get the maps
    resized (nearest), so multi-scale averaging sees the same maps at every scale.
    """

    def __init__(self, cams: Tensor) -> None:
        super().__init__()
        self.cams = cams
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        self.calls.append(tuple(images.shape))
        maps = nn.functional.interpolate(self.cams[None], size=images.shape[-2:], mode="nearest")
        # Mark flipped inputs: a mirrored image puts its "signature" column on the other side.
        flipped = images[:, 0, 0, -1] > images[:, 0, 0, 0]
        maps = maps.expand(len(images), -1, -1, -1).clone()
        maps[flipped] = maps[flipped].flip(-1)
        return {"logits": maps.mean(dim=(-2, -1)), "cams": maps}


def _signed_image(height: int = 8, width: int = 8) -> Tensor:
    """An image whose top-left pixel is brighter than its top-right one (flip detector)."""
    image = torch.zeros(3, height, width)
    image[:, 0, 0] = 1.0
    return image


# -- class activation maps -------------------------------------------------------------------


def test_cams_only_for_the_image_classes_and_peak_at_one() -> None:
    maps = torch.zeros(4, 8, 8)
    maps[0, :, :4] = 2.0  # class 0: left half
    maps[2, 2:4, 2:4] = 5.0  # class 2: a square
    maps[3] = 9.0  # class 3 is not in the image: must not appear
    model = FixedCAMs(maps)
    cams = cam.class_activation_maps(model, _signed_image(), torch.tensor([0, 2]), scales=(1.0,), flip=False)
    assert cams.shape == (2, 8, 8) and cams.dtype == torch.float32
    assert torch.equal(cams[0], (maps[0] / 2.0))
    assert torch.equal(cams[1], (maps[2] / 5.0))


def test_cams_are_relu_before_averaging() -> None:
    maps = torch.full((1, 4, 4), -3.0)
    maps[0, 1, 1] = 1.0
    cams = cam.class_activation_maps(FixedCAMs(maps), _signed_image(4, 4), torch.tensor([0]), flip=False)
    expected = torch.zeros(4, 4)
    expected[1, 1] = 1.0
    assert torch.equal(cams[0], expected)


def test_flip_averages_the_mirrored_image_mapped_back() -> None:
    # The stand-in mirrors its maps for a mirrored input, as a CNN does: a correct flip
    # average mirrors them back and so sees the same map twice.
    maps = torch.zeros(1, 4, 4)
    maps[0, :, 0] = 1.0
    model = FixedCAMs(maps)
    cams = cam.class_activation_maps(model, _signed_image(4, 4), torch.tensor([0]), flip=True)
    assert model.calls == [(2, 3, 4, 4)]  # image and mirror in one batch
    assert torch.equal(cams[0], maps[0] / 1.0)

    # A model blind to the mirroring gives a symmetric average: proof the mirror's maps are
    # flipped back before they are added.
    class Static(nn.Module):
        def forward(self, images: Tensor) -> dict[str, Tensor]:
            return {"cams": maps.expand(len(images), -1, -1, -1)}

    cams = cam.class_activation_maps(Static(), _signed_image(4, 4), torch.tensor([0]), flip=True)
    assert torch.allclose(cams[0], cams[0].flip(-1))
    assert cams[0, 0, 0] == cams[0, 0, 3] == 1.0


def test_multi_scale_runs_every_scale_at_the_image_size() -> None:
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:6, 2:6] = 1.0
    model = FixedCAMs(maps)
    cams = cam.class_activation_maps(model, _signed_image(8, 8), torch.tensor([0]), scales=(1.0, 0.5, 2.0), flip=False)
    assert [c[-2:] for c in model.calls] == [(8, 8), (4, 4), (16, 16)]
    assert cams.shape == (1, 8, 8)
    assert cams.max() == 1.0 and cams[0, 0, 0] == 0.0 and cams[0, 4, 4] == 1.0


@pytest.mark.parametrize(
    ("image", "classes", "scales", "message"),
    [
        (torch.zeros(8, 8), torch.tensor([0]), (1.0,), "image must be"),
        (torch.zeros(3, 8, 8), torch.tensor([], dtype=torch.int64), (1.0,), "classes must be"),
        (torch.zeros(3, 8, 8), torch.tensor([0]), (), "scales must be"),
        (torch.zeros(3, 8, 8), torch.tensor([0]), (1.0, 0.0), "scales must be"),
    ],
)
def test_cams_reject_bad_input(image: Tensor, classes: Tensor, scales: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cam.class_activation_maps(FixedCAMs(torch.zeros(1, 8, 8)), image, classes, scales)


# -- background and labels ---------------------------------------------------------------------


def test_background_threshold_and_label_values() -> None:
    cams = torch.tensor([[[0.9, 0.2, 0.5]], [[0.1, 0.25, 0.6]]])  # [K=2, 1, 3]
    scores = cam.with_background(cams, 0.3)
    assert scores.shape == (3, 1, 3)
    assert torch.equal(scores[0], torch.full((1, 3), 0.3))
    # classes 4 and 1 -> label values 5 and 2; pixel 1 has no class above 0.3 -> background
    labels = cam.threshold_labels(scores, torch.tensor([4, 1]))
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[5, 0, 2]]


def test_unsure_pixels_become_ignore_not_background() -> None:
    probs = torch.tensor(
        [
            [[0.8, 0.40, 0.1]],  # background
            [[0.1, 0.35, 0.1]],  # class 3
            [[0.1, 0.25, 0.8]],  # class 0
        ]
    )
    labels = cam.confident_labels(probs, torch.tensor([3, 0]), min_confidence=0.5)
    assert labels.tolist() == [[0, IGNORE, 1]]
    assert cam.confident_labels(probs, torch.tensor([3, 0]), min_confidence=0.0).tolist() == [[0, 0, 1]]


def test_labels_reject_scores_of_the_wrong_depth() -> None:
    with pytest.raises(ValueError, match="K \\+ 1"):
        cam.threshold_labels(torch.zeros(2, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="K \\+ 1"):
        cam.confident_labels(torch.zeros(4, 4), torch.tensor([0]), 0.5)


# -- refinement --------------------------------------------------------------------------------


def test_shifted_views_shift_and_replicate_the_border() -> None:
    x = torch.arange(9.0).reshape(1, 3, 3)
    right, up = cam.shifted_views(x, [(0, 1), (-1, 0)])
    assert right.shape == up.shape == (1, 3, 3)
    assert right[0].tolist() == [[1, 2, 2], [4, 5, 5], [7, 8, 8]]
    assert up[0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]
    assert len(cam.neighbour_offsets((1, 3))) == 16 and (3, -3) in cam.neighbour_offsets((1, 3))


def test_texture_guide_is_flat_inside_a_texture() -> None:
    # Stripes of period 3 (1, 0, 0, ...): colour changes every pixel, but a 3 px window always
    # holds one period, so mean 1/3 and spread sqrt(1/3 - 1/9) everywhere off the border.
    stripes = (torch.arange(12) % 3 == 0).float().expand(1, 12, 12)
    guide = cam.texture_guide(stripes, window=3)
    assert guide.shape == (3, 12, 12)
    assert torch.equal(guide[0], stripes[0])
    inner = guide[1:, 1:-1, 1:-1]
    assert torch.allclose(inner[0], torch.full_like(inner[0], 1 / 3))
    assert torch.allclose(inner[1], torch.full_like(inner[1], (2 / 9) ** 0.5), atol=1e-6)
    assert cam.texture_guide(stripes, 1) is stripes
    with pytest.raises(ValueError, match="odd"):
        cam.texture_guide(stripes, 4)


def _two_regions(size: int = 32, edge: int = 12) -> tuple[Tensor, Tensor, Tensor]:
    """A sharp vertical colour edge at column ``edge`` and a CAM that blurs past it.

    Returns:
        image [3, H, W], scores [2, H, W] (background, object), truth [H, W] bool (object).
    """
    columns = torch.arange(size, dtype=torch.float32)
    truth = (columns < edge).expand(size, size)
    image = torch.where(truth, torch.tensor([0.8, 0.2, 0.2])[:, None, None], torch.tensor([0.2, 0.3, 0.7])[:, None, None])
    # The object's CAM fades out linearly 8 px too late: thresholding it at 0.3 overshoots.
    blurry = ((edge + 8 - columns) / 16).clamp(0, 1).expand(size, size)
    return image, torch.stack([torch.full_like(blurry, 0.3), blurry]), truth


def _iou(a: Tensor, b: Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


@pytest.mark.parametrize("method", ["pamr", "dense_crf"])
def test_refinement_snaps_a_blurry_cam_to_the_image_edge(method: str) -> None:
    image, scores, truth = _two_regions()
    raw = scores.argmax(dim=0) == 1
    if method == "pamr":
        refined = cam.pamr(image, scores, dilations=(1, 2, 4), iterations=10)
    else:
        refined = cam.dense_crf(image, scores / scores.sum(dim=0, keepdim=True), dilations=(1, 2, 4, 8))
    assert refined.shape == scores.shape
    refined_mask = refined.argmax(dim=0) == 1
    assert _iou(raw, truth) < 0.8
    assert _iou(refined_mask, truth) > 0.95


def test_pamr_keeps_uniform_scores_and_scales_freely() -> None:
    image, scores, _ = _two_regions(16, 6)
    flat = torch.full_like(scores, 0.5)
    assert torch.allclose(cam.pamr(image, flat, (1, 2), 3), flat)
    # The affinities do not depend on the colour scale.
    assert torch.allclose(cam.pamr(image, scores, (1, 2), 3), cam.pamr(255 * image, scores, (1, 2), 3), atol=1e-5)


# -- the chain for one image -------------------------------------------------------------------


def _params(**overrides) -> WSSSParams:
    base = dict(scales=[1.0], flip=False, dilations=[1, 2, 4], iterations=10, texture_window=1, refine_stride=1)
    return dataclasses.replace(WSSSParams(), **{**base, **overrides})


@pytest.mark.parametrize(
    "options",
    [
        dict(refine="pamr"),
        dict(refine="pamr", refine_stride=2),  # refined on a 16 x 16 grid, resized back
        dict(refine="crf", dilations=[1, 2, 4, 8], bg_threshold=0.3),
    ],
)
def test_pseudo_labels_of_one_image(options: dict) -> None:
    image, scores, truth = _two_regions()
    image = (image - 0.45) / 0.225  # the colour scale of an ImageNet-normalised image
    maps = torch.zeros(3, 32, 32)
    maps[1] = scores[1]  # class 1 is the blurry object; class 2 fires elsewhere but is absent
    maps[2] = 1.0
    out = cam.semantic_pseudo_labels(FixedCAMs(maps), image, torch.tensor([1]), _params(**options))
    assert out.cams.shape == (1, 32, 32) and out.raw.dtype == out.refined.dtype == torch.uint8
    assert set(out.raw.unique().tolist()) == {0, 2} and set(out.refined.unique().tolist()) <= {0, 2, IGNORE}
    assert _iou(out.refined == 2, truth) > _iou(out.raw == 2, truth) + 0.1


def test_pseudo_labels_leave_unsure_pixels_to_ignore() -> None:
    image, scores, _ = _two_regions()
    model = FixedCAMs(scores[1:])
    loose = cam.semantic_pseudo_labels(model, image, torch.tensor([0]), _params(min_confidence=0.0))
    strict = cam.semantic_pseudo_labels(model, image, torch.tensor([0]), _params(min_confidence=0.75))
    assert not (loose.refined == IGNORE).any()
    # The unsure pixels are the background ones the blurry CAM reached, just past the edge.
    unsure_columns = (strict.refined == IGNORE).any(dim=0).nonzero().flatten()
    assert len(unsure_columns) > 0 and unsure_columns.min() >= 12 and unsure_columns.max() < 24
    unsure = strict.refined == IGNORE
    # Raising the bar turns pixels into ignore, never into background or another class.
    assert torch.equal(strict.refined[~unsure], loose.refined[~unsure])


def test_pseudo_labels_of_an_image_without_classes_are_background() -> None:
    out = cam.semantic_pseudo_labels(FixedCAMs(torch.ones(2, 4, 4)), torch.zeros(3, 5, 7), torch.tensor([], dtype=torch.int64), _params())
    assert out.cams.shape == (0, 5, 7)
    assert out.raw.shape == (5, 7) and not out.raw.any() and not out.refined.any()


def test_wsss_params_need_scales_and_dilations() -> None:
    with pytest.raises(BestieError, match="wsss.scales must not be empty"):
        parse_params({"wsss": {"scales": []}})
    with pytest.raises(BestieError, match=r"wsss.dilations\[1\] must be >= 1"):
        parse_params({"wsss": {"dilations": [1, 0]}})
