from __future__ import annotations

import numpy as np
import pytest
import torch

from bestie.data.transforms import (
    MEAN_RGB,
    ColorJitter,
    GeometricTransform,
    normalize,
    sample_color_jitter,
    sample_geometric,
)
from bestie.structures import IGNORE

H, W = 40, 50


def blob_labels(x: int, y: int, radius: int = 2) -> np.ndarray:
    """A uint8 [H, W] map with a (2r+1)-square of 1s centred on (x, y)."""
    labels = np.zeros((H, W), np.uint8)
    labels[y - radius : y + radius + 1, x - radius : x + radius + 1] = 1
    return labels


def in_crop(point: np.ndarray, transform: GeometricTransform) -> bool:
    """Does the (x, y) point round to a pixel of the transform's crop?"""
    x0, y0, x1, y1 = transform.crop_box
    return -0.5 <= point[0] < x1 - x0 - 0.5 and -0.5 <= point[1] < y1 - y0 - 0.5


def centroid(weights: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs].astype(np.float64)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


def test_a_dot_lands_where_apply_points_says_at_scale_one():
    image = np.zeros((H, W, 3), np.uint8)
    image[20, 10] = 255
    transform = GeometricTransform((H, W), 1.0, (3, 5, 35, 29), flip=True)
    out = transform.apply_image(image)
    assert out.shape == (24, 32, 3)
    (x, y), = transform.apply_points([[10, 20]])
    assert (x, y) == (24.0, 15.0)  # 10 - 3 = 7, flipped in 32 columns: 31 - 7
    assert out[int(y), int(x)].tolist() == [255, 255, 255]
    assert (out.sum(-1) > 0).sum() == 1


@pytest.mark.parametrize("scale, flip", [(3.0, False), (3.0, True), (0.5, False), (0.5, True)])
def test_pixel_centres_map_exactly_under_integer_scales(scale, flip):
    # A 4 x 4 block at x 10..13, y 20..23 (centre (11.5, 21.5)) covers whole pixels at
    # scale 3 and pixel pairs at scale 0.5, so its centroid moves exactly by the formula.
    labels = np.zeros((H, W), np.uint8)
    labels[20:24, 10:14] = 1
    image = np.repeat(labels[..., None] * 200, 3, axis=2)
    height, width = round(H * scale), round(W * scale)
    transform = GeometricTransform((H, W), scale, (2, 1, width - 3, height - 2), flip)
    (expected,) = transform.apply_points([[11.5, 21.5]])
    np.testing.assert_allclose(centroid(transform.apply_labels(labels) == 1), expected, atol=1e-6)
    np.testing.assert_allclose(centroid(transform.apply_image(image)[..., 0]), expected, atol=0.02)


@pytest.mark.parametrize("seed", range(6))
def test_points_follow_image_and_labels_under_random_transforms(seed):
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(8, W - 8)), int(rng.integers(8, H - 8))
    labels = blob_labels(x, y)
    image = np.repeat(labels[..., None] * 200, 3, axis=2)
    transform = sample_geometric(rng, (H, W), 36, (0.7, 1.6))
    while True:  # the blob must stay inside the crop for a centroid to make sense
        point = transform.apply_points([[x, y]])
        if in_crop(point[0], transform) and (transform.apply_labels(labels) == 1).sum() >= 9:
            break
        transform = sample_geometric(rng, (H, W), 36, (0.7, 1.6))
    expected = point[0]
    label_out = transform.apply_labels(labels)
    image_out = transform.apply_image(image, fill=(0, 0, 0))
    # Nearest sampling moves a blob edge by up to half a pixel, bilinear by less.
    np.testing.assert_allclose(centroid(label_out == 1), expected, atol=0.75)
    np.testing.assert_allclose(centroid(image_out[..., 0]), expected, atol=0.35)


def test_padding_is_ignore_for_labels_and_the_mean_colour_for_images():
    transform = GeometricTransform((H, W), 1.0, (-4, -2, W, H), flip=False)
    labels = transform.apply_labels(np.zeros((H, W), np.uint8))
    image = transform.apply_image(np.zeros((H, W, 3), np.uint8))
    assert labels.shape == (H + 2, W + 4)
    assert (labels[:2] == IGNORE).all() and (labels[:, :4] == IGNORE).all()
    assert (labels[2:, 4:] == 0).all()
    assert image[0, 0].tolist() == list(MEAN_RGB) and image[5, 5].tolist() == [0, 0, 0]


def test_a_scaled_image_smaller_than_the_crop_lies_inside_it():
    rng = np.random.default_rng(0)
    transform = sample_geometric(rng, (H, W), 64, (1.0, 1.0))
    x0, y0, x1, y1 = transform.crop_box
    assert (x1 - x0, y1 - y0) == (64, 64)
    assert W - 64 <= x0 <= 0 and H - 64 <= y0 <= 0
    labels = transform.apply_labels(np.zeros((H, W), np.uint8))
    assert (labels == 0).sum() == H * W


def test_flip_twice_is_the_identity():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, (H, W), dtype=np.uint8)
    points = rng.uniform(0, 40, (5, 2)).astype(np.float32)
    flip = GeometricTransform((H, W), 1.0, (0, 0, W, H), flip=True)
    assert not np.array_equal(flip.apply_image(image), image)
    np.testing.assert_array_equal(flip.apply_image(flip.apply_image(image)), image)
    np.testing.assert_array_equal(flip.apply_labels(flip.apply_labels(labels)), labels)
    np.testing.assert_allclose(flip.apply_points(flip.apply_points(points)), points, atol=1e-5)


def test_nearest_resize_keeps_label_values_and_size():
    labels = np.random.default_rng(2).choice([0, 3, 255], (H, W)).astype(np.uint8)
    transform = GeometricTransform((H, W), 1.5, (0, 0, 75, 60), flip=False)
    out = transform.apply_labels(labels)
    assert out.shape == (60, 75) and set(np.unique(out)) <= {0, 3, 255}
    np.testing.assert_array_equal(out[::3, ::3], labels[::2, ::2])  # pixel 3i lands on 2i


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="size"):
        GeometricTransform((H, W), 1.0, (0, 0, W, H), False).apply_labels(np.zeros((W, H), np.uint8))


# --- a pseudo label's instance map and centers, as the training data loader augments them --------


def _augment(instance_map: np.ndarray, centers: np.ndarray, scale: float, crop, flip: bool):
    transform = GeometricTransform(instance_map.shape, scale, crop, flip)
    return transform.apply_labels(instance_map, fill=0), transform.apply_points(centers)


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return GeometricTransform((height, width), scale, (0, 0, 1, 1), False).scaled_size


def test_scaled_size_rounds():
    assert _scaled_size(100, 50, 1.5) == (150, 75)
    assert _scaled_size(10, 7, 0.5) == (5, 4)  # round(3.5) = 4
    assert _scaled_size(3, 3, 0.01) == (1, 1)


def test_transform_points_formula():
    # 10x20 image scaled by 1.5 -> 15x30, crop (4, 2, 24, 12) of width 20, then flip.
    points = np.array([[0.0, 0.0], [19.0, 9.0], [3.2, 4.7]])
    x = (points[:, 0] + 0.5) * 1.5 - 0.5 - 4
    y = (points[:, 1] + 0.5) * 1.5 - 0.5 - 2
    crop = (4, 2, 24, 12)
    moved = GeometricTransform((10, 20), 1.5, crop, False).apply_points(points)
    np.testing.assert_allclose(moved, np.stack([x, y], 1), rtol=1e-6)
    moved = GeometricTransform((10, 20), 1.5, crop, True).apply_points(points)
    np.testing.assert_allclose(moved, np.stack([19 - x, y], 1), rtol=1e-6)


def test_instances_scale_crop_pad_and_flip():
    instance_map = np.array([[1, 2], [3, 0]], np.uint8)
    centers = np.array([[0.0, 0.0], [1.0, 0.0]])
    out, moved = _augment(instance_map, centers, 2.0, (-1, 0, 4, 3), flip=False)
    expected = np.array([[0, 1, 1, 2, 2], [0, 1, 1, 2, 2], [0, 3, 3, 0, 0]], np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(moved, [[1.5, 0.5], [3.5, 0.5]])

    out, moved = _augment(instance_map, centers, 2.0, (-1, 0, 4, 3), flip=True)
    np.testing.assert_array_equal(out, expected[:, ::-1])
    np.testing.assert_allclose(moved, [[2.5, 0.5], [0.5, 0.5]])


def test_vanished_instances_keep_their_row():
    instance_map = np.zeros((10, 10), np.int32)
    instance_map[0:2, 0:2] = 1
    instance_map[6:10, 6:10] = 2
    centers = np.array([[0.5, 0.5], [7.5, 7.5]])
    out, centers = _augment(instance_map, centers, 1.0, (5, 5, 10, 10), False)
    assert centers.shape == (2, 2) and not (out == 1).any()
    np.testing.assert_allclose(centers[0], [-4.5, -4.5])


@pytest.mark.parametrize("seed", range(6))
def test_every_pixel_follows_its_point_under_upscaling(seed):
    # For scale >= 1, the pixel a transformed pixel-center point lands on holds that pixel's label.
    rng = np.random.default_rng(seed)
    height, width = rng.integers(8, 20, size=2)
    instance_map = rng.integers(0, 50, size=(height, width))
    scale = rng.uniform(1.0, 2.0)
    out_h, out_w = _scaled_size(height, width, scale)
    x0, y0 = rng.integers(-4, 4), rng.integers(-4, 4)
    crop = (x0, y0, x0 + rng.integers(5, out_w + 6), y0 + rng.integers(5, out_h + 6))
    flip = bool(rng.integers(2))
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)

    out, moved = _augment(instance_map, points, scale, crop, flip)
    cols, rows = np.floor(moved[:, 0] + 0.5).astype(int), np.floor(moved[:, 1] + 0.5).astype(int)
    visible = (cols >= 0) & (cols < out.shape[1]) & (rows >= 0) & (rows < out.shape[0])
    assert visible.sum() > 10
    np.testing.assert_array_equal(out[rows[visible], cols[visible]], instance_map.ravel()[visible])


def test_color_jitter():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ColorJitter()(image), image)
    grey = ColorJitter(saturation=0.0)(image)
    assert (np.abs(grey.astype(int) - grey[..., :1]) <= 1).all()  # all channels equal
    assert ColorJitter(brightness=300.0)(image).min() == 255  # clipped, no wrap-around
    jitter = sample_color_jitter(rng, brightness=10, contrast=0.2, saturation=0.2)
    assert abs(jitter.brightness) <= 10 and 0.8 <= jitter.contrast <= 1.2


def test_normalize():
    image = np.empty((4, 6, 3), np.uint8)
    image[...] = MEAN_RGB
    tensor = normalize(image)
    assert tensor.shape == (3, 4, 6) and tensor.dtype == torch.float32
    assert tensor.abs().max() < 0.01  # the padding colour is ~0 after normalisation
    assert torch.allclose(normalize(np.full((1, 1, 3), 255, np.uint8)).flatten(),
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
