"""Post-processing (docs/method.md §7), on hand-built outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bestie.postprocess import merge_flip, postprocess
from bestie.structures import Instances

S, C = 64, 2  # network resolution S x S, two classes
YS = torch.arange(S, dtype=torch.float32)[:, None].expand(S, S)
XS = torch.arange(S, dtype=torch.float32)[None, :].expand(S, S)


def box(y0: int, x0: int, y1: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(S, S, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Two touching class-0 objects (one component) whose centers lie 22 px apart (beyond the
# radius of the 41 px NMS window), a centerless class-1 component, and a class-1 speck
# smaller than min_size.
LEFT, RIGHT = box(10, 5, 30, 27), box(10, 27, 30, 49)
CENTERLESS = box(40, 40, 56, 60)
SPECK = box(2, 55, 7, 60)  # 25 px


def scene() -> dict[str, torch.Tensor]:
    """{"seg": [C+1, S, S], "center": [C, S, S], "offset": [2, S, S]} of the scene above."""
    seg = torch.zeros(C + 1, S, S)
    seg[0] = 2.0
    seg[1][LEFT] = 6.0
    seg[1][RIGHT] = 3.0  # less confident: lower mean probability
    seg[2][CENTERLESS | SPECK] = 5.0
    center = torch.zeros(C, S, S)
    center[0, 19, 16] = 0.9  # left object's center (y, x)
    center[0, 19, 38] = 0.7  # right object's center
    center[1][CENTERLESS] = 0.02
    center[1, 45, 50] = 0.08  # the component's largest center value, below the threshold
    offset = torch.zeros(2, S, S)
    for mask, (cy, cx) in ((LEFT, (19, 16)), (RIGHT, (19, 38))):
        offset[0][mask] = (cy - YS)[mask] + 1.0  # votes near, not on, the centers
        offset[1][mask] = (cx - XS)[mask] - 1.0
    offset[:, SPECK] = 30.0
    return {"seg": seg, "center": center, "offset": offset}


def mean_prob(seg: torch.Tensor, mask: torch.Tensor, cls: int) -> float:
    return float(seg.softmax(0)[cls + 1][mask].mean())


def run(outputs: dict[str, torch.Tensor], **kwargs) -> Instances:
    kwargs.setdefault("image_size", (S, S))
    return postprocess(outputs["seg"], outputs["center"], outputs["offset"], **kwargs)


def test_touching_objects_split_by_centers_and_small_components_dropped():
    outputs = scene()
    result = run(outputs)
    assert result.masks.shape == (3, S, S) and result.masks.dtype == bool
    assert result.classes.dtype == np.int64 and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.classes, [0, 0, 1])
    np.testing.assert_array_equal(result.masks[0], LEFT.numpy())
    np.testing.assert_array_equal(result.masks[1], RIGHT.numpy())
    np.testing.assert_array_equal(result.masks[2], CENTERLESS.numpy())  # the speck is gone
    seg = outputs["seg"]
    expected = [
        0.9 * mean_prob(seg, LEFT, 0),
        0.7 * mean_prob(seg, RIGHT, 0),
        0.08 * mean_prob(seg, CENTERLESS, 1),
    ]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)


def test_scores_are_sorted_descending():
    outputs = scene()
    outputs["center"][0, 19, 16] = 0.2  # the left object now scores below the right one
    result = run(outputs)
    assert np.all(np.diff(result.scores) <= 0)
    np.testing.assert_array_equal(result.masks[0], RIGHT.numpy())
    np.testing.assert_array_equal(result.masks[1], LEFT.numpy())


def test_min_size_and_threshold_are_respected():
    outputs = scene()
    result = run(outputs, min_size=10)
    assert any(np.array_equal(m, SPECK.numpy()) for m in result.masks)
    # A threshold above 0.7 leaves one peak: the whole component is one instance.
    result = run(outputs, center_threshold=0.8)
    np.testing.assert_array_equal(result.masks[0], (LEFT | RIGHT).numpy())
    assert len(result) == 2


def test_component_without_center_is_one_instance():
    outputs = scene()
    outputs["center"].zero_()
    result = run(outputs)
    np.testing.assert_array_equal(result.classes, [0, 1])
    np.testing.assert_array_equal(result.masks[0], (LEFT | RIGHT).numpy())
    np.testing.assert_array_equal(result.scores, [0.0, 0.0])  # no center evidence at all


def test_masks_are_returned_at_the_original_image_size():
    outputs = scene()
    result = run(outputs, image_size=(100, 80))
    assert result.masks.shape == (3, 100, 80)
    small = run(outputs)
    small_masks = torch.from_numpy(small.masks)[None].float()
    reference = F.interpolate(small_masks, size=(100, 80), mode="nearest-exact")
    np.testing.assert_array_equal(result.masks, reference[0].bool().numpy())
    np.testing.assert_array_equal(result.scores, small.scores)


def test_flip_merge_of_a_flipped_copy_gives_the_original():
    outputs = scene()
    flipped = {k: v.flip(-1) for k, v in outputs.items()}
    flipped["offset"][1] *= -1  # what the network predicts on the flipped image
    merged = merge_flip(outputs, flipped)
    for key in ("seg", "center", "offset"):
        torch.testing.assert_close(merged[key], outputs[key])
    a, b = run(merged), run(outputs)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_flip_merge_averages_and_works_on_batches():
    outputs = {
        "seg": torch.zeros(1, 2, 1, 2),
        "center": torch.zeros(1, 1, 1, 2),
        "offset": torch.zeros(1, 2, 1, 2),
    }
    flipped = {
        "seg": torch.tensor([[[[2.0, 4.0]], [[0.0, 0.0]]]]),
        "center": torch.tensor([[[[0.2, 0.6]]]]),
        "offset": torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]]),
    }
    merged = merge_flip(outputs, flipped)
    torch.testing.assert_close(merged["seg"][0, 0, 0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(merged["center"][0, 0, 0], torch.tensor([0.3, 0.1]))
    torch.testing.assert_close(merged["offset"][0, :, 0], torch.tensor([[1.5, 0.5], [-3.5, -2.5]]))
    with pytest.raises(ValueError, match="offset"):
        merge_flip(outputs, {"seg": flipped["seg"], "center": flipped["center"]})


def test_point_guided_uses_the_given_points():
    outputs = scene()
    outputs["center"].zero_()  # no peaks: the points alone must split the component
    points_xy = torch.tensor([[16.0, 19.0], [38.0, 19.0], [0.0, 0.0]])
    point_classes = torch.tensor([0, 0, -1])
    result = run(outputs, points=(points_xy, point_classes))
    # Class 1 has no point: its component is dropped.
    np.testing.assert_array_equal(result.classes, [0, 0])
    np.testing.assert_array_equal(result.masks[0], LEFT.numpy())
    np.testing.assert_array_equal(result.masks[1], RIGHT.numpy())
    seg = outputs["seg"]
    expected = [mean_prob(seg, LEFT, 0), mean_prob(seg, RIGHT, 0)]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)


def test_point_that_receives_no_pixels_yields_no_instance():
    outputs = scene()
    points_xy = torch.tensor([[16.0, 19.0], [2.0, 60.0]])  # the second is far from every vote
    result = run(outputs, points=(points_xy, torch.tensor([0, 0])))
    assert len(result) == 1
    np.testing.assert_array_equal(result.masks[0], (LEFT | RIGHT).numpy())


def test_empty_prediction_has_correctly_shaped_arrays():
    outputs = scene()
    outputs["seg"][0] = 100.0  # background everywhere
    result = run(outputs, image_size=(30, 20))
    assert result.masks.shape == (0, 30, 20) and result.masks.dtype == bool
    assert result.classes.shape == (0,) and result.classes.dtype == np.int64
    assert result.scores.shape == (0,) and result.scores.dtype == np.float32


def test_bad_output_shapes_are_rejected():
    outputs = scene()
    with pytest.raises(ValueError, match="seg_logits"):
        postprocess(outputs["seg"][:C], outputs["center"], outputs["offset"], image_size=(S, S))
    with pytest.raises(ValueError, match="seg_logits"):
        postprocess(outputs["seg"], outputs["center"], outputs["offset"][:1], image_size=(S, S))


def test_higher_peak_outside_a_component_does_not_suppress_the_peak_inside():
    """Center suppression runs on the class map masked to each component (the published rule).

    Class 0: a left object (center 0.9 at x = 12) and, 4 px to its right, one component
    holding two objects (centers 0.5 at x = 30 and 0.6 at x = 56). The left center lies
    within the 41 px NMS window of the 0.5 one: on the whole class map it would suppress it
    and merge the two right objects into one instance.
    """
    left, right = box(10, 2, 30, 22), box(10, 26, 30, 64)
    right_a, right_b = right & (XS < 43), right & (XS >= 43)
    seg = torch.zeros(C + 1, S, S)
    seg[0] = 2.0
    seg[1][left | right] = 6.0
    center = torch.zeros(C, S, S)
    center[0] = 0.9 * torch.exp(-((YS - 20) ** 2 + (XS - 12) ** 2) / 200)  # shoulder spills right
    center[0, 20, 30] = 0.5
    center[0, 20, 56] = 0.6
    offset = torch.zeros(2, S, S)
    for mask, (cy, cx) in ((left, (20, 12)), (right_a, (20, 30)), (right_b, (20, 56))):
        offset[0][mask] = (cy - YS)[mask]
        offset[1][mask] = (cx - XS)[mask]
    result = run({"seg": seg, "center": center, "offset": offset})
    np.testing.assert_array_equal(result.classes, [0, 0, 0])
    for mask, expected in zip(result.masks, (left, right_b, right_a)):  # by score: 0.9, 0.6, 0.5
        np.testing.assert_array_equal(mask, expected.numpy())
    probability = mean_prob(seg, left, 0)
    np.testing.assert_allclose(result.scores, [0.9 * probability, 0.6 * probability, 0.5 * probability], rtol=1e-5)
