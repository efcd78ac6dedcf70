"""The shared primitives on maps: the window max filter and per-class connected components."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from bestie.spatial import class_components, max_filter


@pytest.mark.parametrize("kernel", [1, 3, 5, 15, 41])
def test_max_filter_equals_max_pool(kernel: int):
    x = torch.randn(3, 37, 50)
    expected = F.max_pool2d(x[None], kernel, stride=1, padding=kernel // 2)[0]
    assert torch.equal(max_filter(x, kernel), expected)


def test_max_filter_rejects_even_kernels():
    with pytest.raises(ValueError, match="kernel"):
        max_filter(torch.zeros(4, 4), 4)


# --------------------------------------------------------------------------------------
# class_components
# --------------------------------------------------------------------------------------


def test_class_components_per_class_eight_connected_and_filtered():
    semantic = np.zeros((40, 40), np.uint8)
    semantic[0:10, 0:10] = 1  # class 0, 100 px
    semantic[10:20, 10:20] = 1  # touches the first only at a corner: same 8-connected component
    semantic[0:10, 30:40] = 2  # class 1, 100 px
    semantic[10:20, 30:40] = 3  # class 2 touching class 1: a separate component
    semantic[30:36, 30:38] = 2  # class 1, 48 px: dropped
    semantic[25:40, 0:10] = 4  # class 3, not an image class: ignored
    semantic[20:22, 0:40] = 255
    component_map, component_class = class_components(semantic, [2, 0, 1], min_size=50)
    assert component_map.dtype == np.int32 and component_map.shape == semantic.shape
    assert component_class.dtype == np.int64
    assert component_class.tolist() == [0, 1, 2]
    expected = np.zeros((40, 40), np.int32)
    expected[0:10, 0:10] = expected[10:20, 10:20] = 1
    expected[0:10, 30:40] = 2
    expected[10:20, 30:40] = 3
    np.testing.assert_array_equal(component_map, expected)


def test_class_components_min_size_is_inclusive_and_empty_map_is_fine():
    semantic = np.zeros((20, 20), np.uint8)
    semantic[0:5, 0:10] = 1  # exactly 50 px
    semantic[10:14, 0:12] = 1  # 48 px
    component_map, component_class = class_components(semantic, [0], min_size=50)
    assert component_class.tolist() == [0] and (component_map == 1).sum() == 50
    component_map, component_class = class_components(np.zeros((5, 5), np.uint8), [0, 1], min_size=50)
    assert component_map.max() == 0 and component_class.shape == (0,)


def test_class_components_rejects_a_non_uint8_map():
    with pytest.raises(ValueError, match="semantic_map"):
        class_components(np.zeros((5, 5), np.int64), [0])
    with pytest.raises(ValueError, match="semantic_map"):
        class_components(np.zeros((2, 5, 5), np.uint8), [0])


def test_class_components_of_every_class_in_the_map_by_connectivity():
    semantic = np.zeros((6, 6), np.uint8)
    semantic[0, 0] = semantic[1, 1] = 3  # diagonal neighbours: 8-connected, not 4-connected
    semantic[4:6, 4:6] = 1
    semantic[5, 0] = 255  # ignore is no class
    component_map, component_class = class_components(semantic, connectivity=4)
    assert component_class.tolist() == [0, 2, 2]
    assert [component_map[4, 4], component_map[0, 0], component_map[1, 1], component_map[5, 0]] == [1, 2, 3, 0]
    component_map, component_class = class_components(semantic)
    assert component_class.tolist() == [0, 2] and component_map[0, 0] == component_map[1, 1] == 2
    with pytest.raises(ValueError, match="connectivity"):
        class_components(semantic, connectivity=6)


@pytest.mark.parametrize("min_size", [1, 4])
def test_class_components_number_as_labelling_each_whole_class_map(min_size: int):
    # Blobs of 4 classes, scattered pixels and ignore: each class is labelled in its bounding
    # box, which must give the components and numbers of labelling the whole map.
    rng = np.random.default_rng(min_size)
    semantic = np.repeat(np.repeat(rng.integers(0, 5, size=(6, 8)), 4, 0), 4, 1).astype(np.uint8)
    semantic[rng.random(semantic.shape) < 0.1] = rng.integers(1, 5)
    semantic[rng.random(semantic.shape) < 0.05] = 255
    component_map, component_class = class_components(semantic, range(4), min_size=min_size)
    expected, next_id = np.zeros(semantic.shape, np.int32), 1
    for cls in range(4):
        labels, count = ndimage.label(semantic == cls + 1, structure=np.ones((3, 3), bool))
        for k in range(1, count + 1):
            if (labels == k).sum() >= min_size:
                expected[labels == k], next_id = next_id, next_id + 1
    assert np.array_equal(component_map, expected) and len(component_class) == next_id - 1
