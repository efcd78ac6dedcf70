from __future__ import annotations

import numpy as np
import pytest
import torch

from bestie.data.transforms import (
    IGNORE,
    MEAN_RGB,
    ColorJitter,
    GeometricTransform,
    normalize,
    sample_color_jitter,
    sample_geometric,
)

H, W = 40, 50


def blob_labels(x: int, y: int, radius: int = 2) -> np.ndarray:
    """A uint8 [H, W] map with a (2r+1)-square of 1s centred on (x, y)."""
    labels = np.zeros((H, W), np.uint8)
    labels[y - radius : y + radius + 1, x - radius : x + radius + 1] = 1
    return labels


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
        if transform.inside(point)[0] and (transform.apply_labels(labels) == 1).sum() >= 9:
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
        GeometricTransform.identity((H, W)).apply_labels(np.zeros((W, H), np.uint8))


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
