"""Semantic knowledge transfer (docs/method.md §3): every rule pinned on hand-built maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bestie.structures import PseudoLabel
from bestie.transfer import filter_points, instances_from_ground_truth, semantic_knowledge_transfer


def _map(height: int, width: int, *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """uint8 semantic map with filled boxes (value, y0, x0, y1, x1), end exclusive."""
    semantic = np.zeros((height, width), dtype=np.uint8)
    for value, y0, x0, y1, x1 in boxes:
        semantic[y0:y1, x0:x1] = value
    return semantic


def _transfer(semantic, points, classes, **kwargs) -> PseudoLabel:
    return semantic_knowledge_transfer(
        semantic,
        np.array(points, dtype=np.float32).reshape(-1, 2),
        np.array(classes, dtype=np.int64),
        **kwargs,
    )


# --- connectivity -----------------------------------------------------------------------------

def test_diagonal_blobs_are_one_component_with_8_and_two_with_4():
    # Two 2x2 blobs of class 0 touching only at a corner; one point in the upper-left blob.
    semantic = _map(6, 6, (1, 0, 0, 2, 2), (1, 2, 2, 4, 4))
    points, classes = [[0, 0]], [0]

    eight = _transfer(semantic, points, classes, min_size=1, connectivity=8)
    assert eight.num_instances == 1
    np.testing.assert_array_equal(eight.instance_map, (semantic == 1).astype(np.int32))
    assert (eight.rejected_no_point, eight.rejected_multi_point) == (0, 0)

    four = _transfer(semantic, points, classes, min_size=1, connectivity=4)
    assert four.num_instances == 1
    expected = np.zeros((6, 6), dtype=np.int32)
    expected[0:2, 0:2] = 1
    np.testing.assert_array_equal(four.instance_map, expected)
    assert (four.rejected_no_point, four.rejected_multi_point) == (1, 0)


def test_default_connectivity_is_8():
    semantic = _map(6, 6, (1, 0, 0, 2, 2), (1, 2, 2, 4, 4))
    assert _transfer(semantic, [[0, 0]], [0], min_size=1).instance_map.max() == 1
    assert _transfer(semantic, [[0, 0]], [0], min_size=1).instance_map.sum() == 8


# --- exactly one point ------------------------------------------------------------------------

def test_exactly_one_point_of_the_class_accepts_the_component():
    # Four 3x3 class-0 blobs: A no point, B one point (plus one of class 1, which does not
    # count), C two points, D only a point of class 1.
    semantic = _map(
        4, 16, (1, 0, 0, 3, 3), (1, 0, 4, 3, 7), (1, 0, 8, 3, 11), (1, 0, 12, 3, 15)
    )
    points = [[5, 1], [6, 2], [9, 0], [10, 2], [13, 1]]
    classes = [0, 1, 0, 0, 1]
    result = _transfer(semantic, points, classes, min_size=9)

    assert result.num_instances == 1
    expected = np.zeros_like(result.instance_map)
    expected[0:3, 4:7] = 1
    np.testing.assert_array_equal(result.instance_map, expected)
    np.testing.assert_array_equal(result.classes, [0])
    assert result.rejected_no_point == 2  # A and D
    assert result.rejected_multi_point == 1  # C


def test_points_in_background_or_void_count_nowhere():
    semantic = _map(4, 8, (1, 0, 0, 3, 3), (255, 0, 5, 4, 8))
    result = _transfer(semantic, [[1, 1], [6, 1], [4, 3]], [0, 0, 0], min_size=1)
    assert result.num_instances == 1
    assert (result.rejected_no_point, result.rejected_multi_point) == (0, 0)


# --- size threshold ---------------------------------------------------------------------------

def test_components_below_min_size_are_dropped_and_not_counted():
    # 7x7 = 49 px blobs: one point, no point, two points. 5x10 = 50 px blob: one point.
    semantic = _map(
        30, 30, (1, 0, 0, 7, 7), (1, 10, 0, 17, 7), (1, 20, 0, 27, 7), (1, 0, 15, 5, 25)
    )
    points = [[3, 3], [2, 21], [4, 22], [20, 2]]
    result = _transfer(semantic, points, [0, 0, 0, 0])  # default min_size = 50

    assert result.num_instances == 1
    expected = np.zeros_like(result.instance_map)
    expected[0:5, 15:25] = 1
    np.testing.assert_array_equal(result.instance_map, expected)
    assert (result.rejected_no_point, result.rejected_multi_point) == (0, 0)


def test_min_size_is_inclusive():
    semantic = _map(10, 10, (1, 0, 0, 7, 7))  # 49 px
    assert _transfer(semantic, [[3, 3]], [0], min_size=49).num_instances == 1
    assert _transfer(semantic, [[3, 3]], [0], min_size=50).num_instances == 0


# --- centers ----------------------------------------------------------------------------------

def test_centroid_center_is_the_mean_pixel_position():
    semantic = _map(10, 12, (3, 2, 3, 6, 11))  # rows 2..5, cols 3..10, class 2
    result = _transfer(semantic, [[4.2, 2.9]], [2], min_size=1, center="centroid")
    assert result.centers.dtype == np.float32
    np.testing.assert_array_equal(result.centers, [[6.5, 3.5]])
    np.testing.assert_array_equal(result.classes, [2])


def test_centroid_of_a_non_convex_component():
    semantic = _map(5, 5, (1, 0, 0, 1, 3), (1, 1, 0, 3, 1))  # L: (0,0),(0,1),(0,2),(1,0),(2,0)
    result = _transfer(semantic, [[0, 0]], [0], min_size=1)
    np.testing.assert_allclose(result.centers, [[(0 + 1 + 2 + 0 + 0) / 5, (0 + 0 + 0 + 1 + 2) / 5]])


def test_point_center_is_the_unrounded_point():
    semantic = _map(10, 12, (3, 2, 3, 6, 11))
    result = _transfer(semantic, [[4.2, 2.9]], [2], min_size=1, center="point")
    np.testing.assert_array_equal(result.centers, np.array([[4.2, 2.9]], dtype=np.float32))


def test_point_centers_follow_instance_order():
    # Class 1 (value 2) listed first among the points, but class 0 instances come first.
    semantic = _map(10, 20, (2, 0, 0, 3, 3), (1, 0, 10, 3, 13), (1, 6, 0, 9, 3))
    points = [[1, 1], [1, 7], [11, 1]]
    result = _transfer(semantic, points, [1, 0, 0], min_size=1, center="point")
    np.testing.assert_array_equal(result.classes, [0, 0, 1])
    # Within class 0, scipy numbers components in raster order: (0, 10) before (6, 0).
    np.testing.assert_array_equal(result.centers, [[11, 1], [1, 7], [1, 1]])
    assert result.instance_map[0, 10] == 1 and result.instance_map[6, 0] == 2
    assert result.instance_map[0, 0] == 3


# --- which values are classes -----------------------------------------------------------------

def test_background_and_void_are_never_classes():
    semantic = _map(20, 20, (255, 0, 0, 10, 20))  # a large void region, the rest background
    result = _transfer(semantic, [[5, 5], [5, 15]], [0, 0], min_size=1)
    assert result.num_instances == 0
    assert (result.rejected_no_point, result.rejected_multi_point) == (0, 0)
    assert result.instance_map.dtype == np.int32
    assert result.centers.shape == (0, 2) and result.classes.shape == (0,)


def test_value_254_is_the_last_class():
    semantic = _map(4, 4, (254, 0, 0, 2, 2))
    result = _transfer(semantic, [[0, 0]], [253], min_size=1)
    np.testing.assert_array_equal(result.classes, [253])


# --- where a point lies -----------------------------------------------------------------------

def test_point_pixel_is_rounded_and_clipped():
    semantic = _map(6, 8, (1, 0, 3, 6, 8))  # cols 3..7
    assert _transfer(semantic, [[2.6, 2.0]], [0], min_size=1).num_instances == 1
    assert _transfer(semantic, [[2.4, 2.0]], [0], min_size=1).num_instances == 0
    assert _transfer(semantic, [[2.5, 2.0]], [0], min_size=1).num_instances == 1  # ties round up
    assert _transfer(semantic, [[100.0, -7.0]], [0], min_size=1).num_instances == 1  # clipped


def test_no_points():
    semantic = _map(6, 6, (1, 0, 0, 3, 3))
    no_xy, no_classes = np.zeros((0, 2)), np.zeros(0, np.int64)
    result = semantic_knowledge_transfer(semantic, no_xy, no_classes, min_size=1)
    assert result.num_instances == 0 and result.rejected_no_point == 1


# --- against a slow reference on random maps ---------------------------------------------------

def _reference_transfer(semantic, points, classes, min_size, center):
    """Component-by-component restatement of the rules (loops are fine here)."""
    instance_map = np.zeros(semantic.shape, np.int32)
    out_classes, out_centers, no_point, multi_point = [], [], 0, 0
    rows = np.clip(np.floor(points[:, 1] + 0.5), 0, semantic.shape[0] - 1).astype(int)
    cols = np.clip(np.floor(points[:, 0] + 0.5), 0, semantic.shape[1] - 1).astype(int)
    for value in range(1, 255):
        labels, count = ndimage.label(semantic == value, structure=np.ones((3, 3)))
        for label in range(1, count + 1):
            pixels = labels == label
            if pixels.sum() < min_size:
                continue
            inside = [
                i for i in range(len(points))
                if classes[i] == value - 1 and pixels[rows[i], cols[i]]
            ]
            if len(inside) == 0:
                no_point += 1
            elif len(inside) > 1:
                multi_point += 1
            else:
                instance_map[pixels] = len(out_classes) + 1
                out_classes.append(value - 1)
                ys, xs = np.nonzero(pixels)
                centroid = [xs.mean(), ys.mean()]
                out_centers.append(centroid if center == "centroid" else points[inside[0]])
    return instance_map, out_classes, np.array(out_centers).reshape(-1, 2), no_point, multi_point


@pytest.mark.parametrize("center", ["centroid", "point"])
def test_matches_reference_on_random_maps(center):
    rng = np.random.default_rng(0)
    for _ in range(5):
        # Smoothed noise gives blobs of all sizes, several classes, void and background.
        noise = ndimage.uniform_filter(rng.random((48, 64)), size=5)
        semantic = np.digitize(noise, [0.45, 0.5, 0.55]).astype(np.uint8)  # 0, 1, 2, 3
        semantic[rng.random(semantic.shape) < 0.02] = 255
        points = rng.uniform(-2, 66, size=(40, 2))
        classes = rng.integers(0, 3, size=40)
        result = semantic_knowledge_transfer(semantic, points, classes, min_size=20, center=center)
        instance_map, out_classes, centers, no_point, multi_point = _reference_transfer(
            semantic, points, classes, 20, center
        )
        assert result.num_instances > 0 and no_point + multi_point > 0  # the case is not vacuous
        np.testing.assert_array_equal(result.instance_map, instance_map)
        np.testing.assert_array_equal(result.classes, out_classes)
        np.testing.assert_allclose(result.centers, centers, rtol=1e-6)
        assert (result.rejected_no_point, result.rejected_multi_point) == (no_point, multi_point)


# --- full supervision -------------------------------------------------------------------------

def test_ground_truth_objects_become_instances():
    objects = np.zeros((8, 10), np.uint8)
    classes = np.zeros((8, 10), np.uint8)
    objects[0:4, 0:4] = 7  # first in raster order, but instances follow object ids
    classes[0:4, 0:4] = 3
    classes[1, 1] = 5  # one stray pixel; the majority (class 2) wins
    objects[5:8, 6:10] = 3
    classes[5:8, 6:10] = 1
    objects[4, :] = 255  # void band
    classes[4, :] = 255
    classes[0:4, 0] = 255  # void class pixels do not vote

    result = instances_from_ground_truth(objects, classes)
    assert result.num_instances == 2
    expected = np.zeros((8, 10), np.int32)
    expected[5:8, 6:10] = 1  # object id 3 -> instance 1
    expected[0:4, 0:4] = 2  # object id 7 -> instance 2
    np.testing.assert_array_equal(result.instance_map, expected)
    np.testing.assert_array_equal(result.classes, [0, 2])
    np.testing.assert_allclose(result.centers, [[7.5, 6.0], [1.5, 1.5]])
    assert (result.rejected_no_point, result.rejected_multi_point) == (0, 0)


def test_ground_truth_without_objects():
    result = instances_from_ground_truth(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    assert result.num_instances == 0 and result.centers.shape == (0, 2)


# --- point filtering --------------------------------------------------------------------------

def test_filter_points_keeps_scores_strictly_above_threshold():
    points = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], np.float32)
    scores = np.array([0.7, 0.71, 0.9, 0.2])
    kept_xy, kept_classes = filter_points(points, np.array([0, 1, 2, 3]), scores, 0.7)
    np.testing.assert_array_equal(kept_xy, [[1, 1], [2, 2]])
    np.testing.assert_array_equal(kept_classes, [1, 2])


# --- bad input --------------------------------------------------------------------------------

_MAP = np.zeros((4, 4), np.uint8)
_NO_XY, _NO_CLASSES = np.zeros((0, 2)), np.zeros(0, int)


@pytest.mark.parametrize(
    "semantic, points, classes, kwargs, message",
    [
        (np.zeros((2, 4, 4), np.uint8), _NO_XY, _NO_CLASSES, {}, "semantic_map: expected a 2-D"),
        (np.zeros((4, 4), np.float32), _NO_XY, _NO_CLASSES, {}, "semantic_map: expected an int"),
        (np.full((4, 4), 300), _NO_XY, _NO_CLASSES, {}, "semantic_map: values"),
        (_MAP, np.zeros((3,)), np.zeros(3, int), {}, "points_xy: expected shape"),
        (_MAP, np.zeros((3, 3)), np.zeros(3, int), {}, "points_xy: expected shape"),
        (_MAP, np.zeros((3, 2)), np.zeros(2, int), {}, "point_classes: expected shape"),
        (_MAP, np.zeros((1, 2)), np.array([254]), {}, "point_classes: class index 254"),
        (_MAP, np.zeros((1, 2)), np.array([-1]), {}, "point_classes: class index -1"),
        (_MAP, np.zeros((1, 2)), np.array([0.5]), {}, "point_classes: expected integers"),
        (_MAP, np.full((1, 2), np.nan), np.array([0]), {}, "points_xy: coordinates must be finite"),
        (_MAP, _NO_XY, _NO_CLASSES, {"center": "mean"}, "center"),
        (_MAP, _NO_XY, _NO_CLASSES, {"connectivity": 6}, "connectivity"),
        (_MAP, _NO_XY, _NO_CLASSES, {"min_size": -1}, "min_size"),
    ],
)
def test_bad_input_is_rejected(semantic, points, classes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        semantic_knowledge_transfer(semantic, points, classes, **kwargs)


def test_bad_ground_truth_is_rejected():
    with pytest.raises(ValueError, match="class_map: shape"):
        instances_from_ground_truth(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    objects = np.zeros((4, 4), np.uint8)
    objects[0, 0] = 2
    with pytest.raises(ValueError, match=r"object id\(s\) \[2\]"):
        instances_from_ground_truth(objects, np.zeros((4, 4), np.uint8))


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="scores"):
        filter_points(np.zeros((2, 2)), np.zeros(2, int), np.zeros(3), 0.5)
