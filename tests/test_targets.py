"""Training targets (docs/method.md §3): Gaussians, offsets, weights, exactness under augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bestie.data.transforms import GeometricTransform
from bestie.targets import center_heatmap, center_loss_weight, offset_and_weight, render_targets
from bestie.transfer import semantic_knowledge_transfer


def _gaussian(size: tuple[int, int], cx: float, cy: float, sigma: float) -> torch.Tensor:
    """[H, W] reference Gaussian from the formula, computed in float64."""
    ys = torch.arange(size[0], dtype=torch.float64)[:, None]
    xs = torch.arange(size[1], dtype=torch.float64)[None, :]
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))


def _assert_close(heatmap: torch.Tensor, expected: torch.Tensor) -> None:
    """A float32 heatmap channel against its float64 reference."""
    torch.testing.assert_close(heatmap.double(), expected, rtol=1e-5, atol=1e-7)


def _boxes_instance_map(
    height: int, width: int, boxes: list[tuple[int, int, int, int]]
) -> torch.Tensor:
    """[H, W] long instance map with box k (y0, x0, y1, x1) as instance k + 1."""
    instance_map = torch.zeros(height, width, dtype=torch.long)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        instance_map[y0:y1, x0:x1] = k + 1
    return instance_map


# --- center heatmap ---------------------------------------------------------------------------

def test_gaussian_peak_is_1_and_exp_minus_half_at_sigma():
    heatmap = center_heatmap(torch.tensor([[10.0, 7.0]]), torch.tensor([2]), 3, (20, 30), sigma=6.0)
    assert heatmap.shape == (3, 20, 30) and heatmap.dtype == torch.float32
    assert heatmap[2, 7, 10].item() == 1.0
    assert heatmap[2].max().item() == 1.0
    for y, x in [(7, 16), (7, 4), (13, 10), (1, 10)]:  # distance sigma along each axis
        assert heatmap[2, y, x].item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    _assert_close(heatmap[2], _gaussian((20, 30), 10, 7, 6.0))
    assert not heatmap[:2].any()  # only the center's class channel


def test_gaussian_at_a_subpixel_center_and_other_sigma():
    heatmap = center_heatmap(torch.tensor([[3.25, 4.5]]), torch.tensor([0]), 1, (9, 8), sigma=2.0)
    _assert_close(heatmap[0], _gaussian((9, 8), 3.25, 4.5, 2.0))


def test_overlapping_gaussians_of_one_class_merge_by_max():
    centers = torch.tensor([[8.0, 8.0], [14.0, 10.0], [20.0, 5.0]])
    heatmap = center_heatmap(centers, torch.tensor([1, 1, 0]), 2, (16, 24), sigma=4.0)
    first, second = _gaussian((16, 24), 8, 8, 4.0), _gaussian((16, 24), 14, 10, 4.0)
    _assert_close(heatmap[1], torch.maximum(first, second))
    assert heatmap[1].max().item() == 1.0  # not a sum
    _assert_close(heatmap[0], _gaussian((16, 24), 20, 5, 4.0))


def test_no_centers_give_zeros():
    heatmap = center_heatmap(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 4, (5, 6))
    assert heatmap.shape == (4, 5, 6) and not heatmap.any()


def test_center_outside_the_image_keeps_its_tail():
    # Rendering on a larger map and cropping gives the same values.
    inside = center_heatmap(torch.tensor([[-3.0, 5.0]]), torch.tensor([0]), 1, (10, 10))
    larger = center_heatmap(torch.tensor([[7.0, 15.0]]), torch.tensor([0]), 1, (30, 30))
    torch.testing.assert_close(inside, larger[:, 10:20, 10:20])
    assert inside[0, 5, 0].item() == pytest.approx(math.exp(-9 / 72), rel=1e-6)


# --- offsets and weights ----------------------------------------------------------------------

def test_offsets_point_at_the_center_of_each_instance():
    instance_map = _boxes_instance_map(12, 16, [(0, 0, 5, 6), (6, 3, 12, 9), (2, 10, 9, 16)])
    centers = torch.tensor([[2.5, 2.0], [5.25, 8.75], [20.0, -3.0]])  # a center may lie outside
    offset, weight = offset_and_weight(instance_map, centers)
    assert offset.shape == (2, 12, 16) and weight.shape == (1, 12, 16)

    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    inside = instance_map > 0
    center_x = centers[instance_map[inside] - 1, 0]
    center_y = centers[instance_map[inside] - 1, 1]
    torch.testing.assert_close(ys[inside] + offset[0][inside], center_y)  # channel 0 = dy
    torch.testing.assert_close(xs[inside] + offset[1][inside], center_x)  # channel 1 = dx
    assert not offset[:, ~inside].any()
    assert offset[0, 0, 0].item() == 2.0 and offset[1, 0, 0].item() == 2.5


def test_weights_are_the_instance_weight_inside_and_zero_outside():
    instance_map = _boxes_instance_map(8, 8, [(0, 0, 3, 3), (4, 4, 8, 8)])
    centers = torch.tensor([[1.0, 1.0], [5.5, 5.5]])
    _, weight = offset_and_weight(instance_map, centers)
    torch.testing.assert_close(weight[0], (instance_map > 0).float())

    _, weight = offset_and_weight(instance_map, centers, torch.tensor([0.25, 0.8]))
    expected = torch.zeros(8, 8)
    expected[0:3, 0:3] = 0.25
    expected[4:8, 4:8] = 0.8
    torch.testing.assert_close(weight[0], expected)


def test_no_instances_give_zero_offsets_and_weights():
    offset, weight = offset_and_weight(torch.zeros(4, 5, dtype=torch.long), torch.zeros(0, 2))
    assert offset.shape == (2, 4, 5) and not offset.any() and not weight.any()


# --- render_targets ---------------------------------------------------------------------------

def test_render_targets_combines_the_three_maps():
    instance_map = _boxes_instance_map(20, 20, [(2, 2, 8, 8), (10, 10, 18, 18)])
    centers = torch.tensor([[4.5, 4.5], [13.5, 13.5]])
    classes = torch.tensor([0, 2])
    weights = torch.tensor([1.0, 0.5])
    targets = render_targets(instance_map, centers, classes, 3, sigma=3.0, instance_weights=weights)
    assert set(targets) == {"center", "offset", "weight"}
    expected_center = center_heatmap(centers, classes, 3, (20, 20), 3.0)
    torch.testing.assert_close(targets["center"], expected_center)
    offset, weight = offset_and_weight(instance_map, centers, weights)
    torch.testing.assert_close(targets["offset"], offset)
    torch.testing.assert_close(targets["weight"], weight)


def test_extra_centers_are_drawn_on_the_heatmap_only():
    instance_map = _boxes_instance_map(20, 20, [(2, 2, 8, 8)])
    centers, classes = torch.tensor([[5.0, 5.0]]), torch.tensor([0])
    extra_xy, extra_classes = torch.tensor([[15.0, 15.0], [5.0, 5.0]]), torch.tensor([1, 0])
    plain = render_targets(instance_map, centers, classes, 2)
    with_extra = render_targets(
        instance_map, centers, classes, 2, extra_centers_xy=extra_xy, extra_classes=extra_classes
    )
    assert with_extra["center"][1, 15, 15].item() == 1.0  # drawn though no instance is there
    assert plain["center"][1].max().item() == 0.0
    # The duplicate of the instance center merges by max.
    torch.testing.assert_close(with_extra["center"][0], plain["center"][0])
    torch.testing.assert_close(with_extra["offset"], plain["offset"])
    torch.testing.assert_close(with_extra["weight"], plain["weight"])


def _one_accepted_one_rejected():
    """A 6x6 crop: an accepted instance (class 0) top-left, a rejected component (class 1)
    bottom-right, one ignored pixel, background elsewhere."""
    semantic = torch.zeros(6, 6, dtype=torch.long)
    semantic[:2, :2] = 1
    semantic[3:, 3:] = 2
    semantic[0, 5] = 255
    weight = torch.zeros(1, 6, 6)
    weight[0, :2, :2] = 1.0
    return weight, semantic


@pytest.mark.parametrize("supervision", ["point", "full"])
def test_complete_center_labels_supervise_the_heatmap_everywhere(supervision):
    weight, semantic = _one_accepted_one_rejected()
    assert center_loss_weight(weight, semantic, supervision, dense=True).eq(1).all()


@pytest.mark.parametrize("supervision", ["cls", "point", "full"])
def test_without_dense_the_center_loss_counts_on_accepted_instances_only(supervision):
    weight, semantic = _one_accepted_one_rejected()
    assert torch.equal(center_loss_weight(weight, semantic, supervision, dense=False), weight)


def test_image_level_centers_count_where_the_heatmap_is_known():
    # Known: accepted instances (their centers are drawn) and background (no object there).
    # Unknown: a rejected component's objects have no center label, and an ignored pixel
    # may be an object; teaching either as "no center" would be wrong.
    weight, semantic = _one_accepted_one_rejected()
    center_weight = center_loss_weight(weight, semantic, "cls", dense=True)
    expected = ((semantic == 0) | (weight[0] > 0)).float()[None]
    assert torch.equal(center_weight, expected)
    assert center_weight[0, 3:, 3:].eq(0).all()  # the rejected component
    assert center_weight[0, 0, 5] == 0  # the ignored pixel
    assert center_weight.dtype == weight.dtype and center_weight.shape == weight.shape


def test_targets_follow_the_input_dtype_free_of_float64():
    instance_map = _boxes_instance_map(6, 6, [(0, 0, 3, 3)]).to(torch.int32)
    centers = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    targets = render_targets(instance_map, centers, torch.tensor([0]), 1)
    assert all(t.dtype == torch.float32 for t in targets.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_targets_stay_on_the_input_device():
    instance_map = _boxes_instance_map(6, 6, [(0, 0, 3, 3)]).cuda()
    centers, classes = torch.tensor([[1.0, 1.0]]).cuda(), torch.tensor([0]).cuda()
    targets = render_targets(instance_map, centers, classes, 1)
    assert all(t.is_cuda for t in targets.values())


# --- augmentation -----------------------------------------------------------------------------

def _augment(instance_map: np.ndarray, centers: np.ndarray, scale: float, crop, flip: bool):
    """What the training data loader does to a pseudo label: one transform for its map and centers."""
    transform = GeometricTransform(instance_map.shape, scale, crop, flip)
    return transform.apply_labels(instance_map, fill=0), transform.apply_points(centers)


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return GeometricTransform((height, width), scale, (0, 0, 1, 1), False).scaled_size


def _random_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 semantic map with a few random boxes, and one interior point per box."""
    semantic = np.zeros((height, width), np.uint8)
    points, classes = [], []
    for _ in range(5):
        h, w = rng.integers(10, 20, size=2)
        y0, x0 = rng.integers(0, height - h), rng.integers(0, width - w)
        if semantic[y0:y0 + h, x0:x0 + w].any():
            continue
        cls = int(rng.integers(0, 3))
        semantic[y0:y0 + h, x0:x0 + w] = cls + 1
        points.append(rng.uniform([x0 + 2, y0 + 2], [x0 + w - 3, y0 + h - 3]))
        classes.append(cls)
    return semantic, np.array(points).reshape(-1, 2), np.array(classes, np.int64)


def _scene_at_random_scale(seed: int, center: str, min_scale: float):
    """A random 64x80 scene's pseudo label, a scale in [min_scale, 1.6) and the scaled size; the rng goes on."""
    rng = np.random.default_rng(seed)
    semantic, points, classes = _random_scene(rng, 64, 80)
    result = semantic_knowledge_transfer(semantic, points, classes, min_size=1, center=center)
    scale = rng.uniform(min_scale, 1.6)
    return rng, result, scale, _scaled_size(64, 80, scale)


def _render(
    instance_map: np.ndarray, centers: np.ndarray, classes: np.ndarray
) -> dict[str, torch.Tensor]:
    return render_targets(
        torch.from_numpy(instance_map.astype(np.int64)),
        torch.from_numpy(centers),
        torch.from_numpy(classes),
        num_classes=3,
    )


@pytest.mark.parametrize("seed", range(8))
def test_targets_commute_with_crop_and_flip(seed):
    # Rendering after crop + flip equals rendering on a canvas holding the whole scaled image
    # (zero-padded), then cutting the crop out and flipping it (dx changes sign).
    rng, result, scale, (out_h, out_w) = _scene_at_random_scale(seed, "centroid", 0.6)
    # A crop around the first instance; it may run past the scaled image.
    whole = (0, 0, out_w, out_h)
    center_x, center_y = GeometricTransform((64, 80), scale, whole, False).apply_points(result.centers[:1])[0]
    x0 = int(center_x) - 24 + int(rng.integers(-20, 20))
    y0 = int(center_y) - 20 + int(rng.integers(-20, 20))
    crop = (x0, y0, x0 + 48, y0 + 40)
    flip = bool(seed % 2)

    moved = _augment(result.instance_map, result.centers, scale, crop, flip)
    cropped = _render(*moved, result.classes)
    assert cropped["weight"].any()  # some instance is in view
    pad = 60
    canvas_box = (-pad, -pad, out_w + pad, out_h + pad)
    moved = _augment(result.instance_map, result.centers, scale, canvas_box, False)
    canvas = _render(*moved, result.classes)
    for key, target in canvas.items():
        expected = target[:, y0 + pad:y0 + pad + 40, x0 + pad:x0 + pad + 48]
        if flip:
            expected = expected.flip(-1)
            if key == "offset":
                expected = expected * torch.tensor([1.0, -1.0])[:, None, None]
        torch.testing.assert_close(
            cropped[key], expected, rtol=1e-5, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.parametrize("seed", range(8))
def test_point_centers_after_augmentation(seed):
    # Point-level: the transformed centers are the points moved by the closed-form map, and
    # each lands inside its own instance, so its offsets lead there.
    rng, result, scale, (out_h, out_w) = _scene_at_random_scale(seed, "point", 0.8)
    crop = (-5, -3, out_w + 4, out_h + 2)
    flip = bool(seed % 2)

    moved = _augment(result.instance_map, result.centers, scale, crop, flip)
    instance_map, centers = moved
    x = (result.centers[:, 0] + 0.5) * out_w / 80 - 0.5 + 5
    y = (result.centers[:, 1] + 0.5) * out_h / 64 - 0.5 + 3
    if flip:
        x = (crop[2] - crop[0] - 1) - x
    expected_centers = np.stack([x, y], 1).astype(np.float32)
    np.testing.assert_allclose(centers, expected_centers, atol=1e-4)

    targets = _render(instance_map, centers, result.classes)
    reference = _render(instance_map, expected_centers, result.classes)
    for key in targets:
        torch.testing.assert_close(targets[key], reference[key], rtol=1e-5, atol=1e-4)
    rows = np.floor(centers[:, 1] + 0.5).astype(int)
    cols = np.floor(centers[:, 0] + 0.5).astype(int)
    np.testing.assert_array_equal(instance_map[rows, cols], np.arange(1, len(centers) + 1))
    peaks = targets["center"][result.classes, rows, cols]
    assert (peaks > math.exp(-0.5 / 36)).all()  # within half a pixel of a Gaussian peak


@pytest.mark.parametrize("seed", range(8))
def test_centroid_centers_after_scaling_move_less_than_a_pixel(seed):
    # Image-level: the transformed centroid is within a pixel of the centroid recomputed on the
    # resampled map (nearest resampling moves borders), so targets agree up to that shift.
    rng, result, scale, (out_h, out_w) = _scene_at_random_scale(seed, "centroid", 0.6)
    flip = bool(seed % 2)
    crop = (-6, -4, out_w + 3, out_h + 5)  # every instance stays whole

    moved = _augment(result.instance_map, result.centers, scale, crop, flip)
    instance_map, centers = moved
    recomputed = np.array(
        [[np.nonzero(instance_map == k)[1].mean(), np.nonzero(instance_map == k)[0].mean()]
         for k in range(1, result.num_instances + 1)],
        np.float32,
    ).reshape(-1, 2)
    shift = np.abs(centers - recomputed)
    assert (shift < 1.0).all()

    targets = _render(instance_map, centers, result.classes)
    reference = _render(instance_map, recomputed, result.classes)
    torch.testing.assert_close(targets["weight"], reference["weight"])
    assert (targets["offset"] - reference["offset"]).abs().max() < 1.0
    # The Gaussian's slope is at most 1 / (sigma * sqrt(e)) per pixel of shift.
    max_slope = 1 / (6 * math.sqrt(math.e))
    center_error = (targets["center"] - reference["center"]).abs().max()
    assert center_error < 2 * shift.max() * max_slope + 1e-6


# --- bad input --------------------------------------------------------------------------------

def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="centers_xy"):
        center_heatmap(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2, (4, 4))
    with pytest.raises(ValueError, match="classes"):
        center_heatmap(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 2, (4, 4))
    with pytest.raises(ValueError, match="instance_map"):
        offset_and_weight(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="instance_map"):
        offset_and_weight(torch.zeros(4, 4), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="instance_weights"):
        offset_and_weight(torch.zeros(4, 4, dtype=torch.long), torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="extra_centers_xy, extra_classes"):
        no_instances = torch.zeros(4, 4, dtype=torch.long)
        no_classes = torch.zeros(0, dtype=torch.long)
        render_targets(
            no_instances, torch.zeros(0, 2), no_classes, 2, extra_centers_xy=torch.zeros(1, 2)
        )
