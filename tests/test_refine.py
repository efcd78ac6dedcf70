"""Self-refinement (docs/method.md §6) on hand-built predictions: no network."""

from __future__ import annotations

import pytest
import torch

from bestie.refine import refine_image_level, refine_point_level, refine_semantic
from bestie.targets import center_heatmap

H, W, C = 32, 64, 3
YS = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
XS = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)


class Scene:
    """One image's predictions, WSSS components and segmentation probabilities, built up
    region by region."""

    def __init__(self) -> None:
        self.center = torch.zeros(C, H, W)
        self.offset = torch.zeros(2, H, W)
        self.prob = torch.zeros(C + 1, H, W)
        self.prob[0] = 1.0
        self.component_map = torch.zeros(H, W, dtype=torch.long)
        self.component_class: list[int] = []

    def component(
        self, cls: int, box: tuple[int, int, int, int], prob: float = 0.8
    ) -> torch.Tensor:
        """Add component (y0, x0, y1, x1) of class ``cls``; returns its [H, W] mask."""
        mask = torch.zeros(H, W, dtype=torch.bool)
        y0, x0, y1, x1 = box
        mask[y0:y1, x0:x1] = True
        self.component_class.append(cls)
        self.component_map[mask] = len(self.component_class)
        self.set_prob(mask, cls, prob)
        return mask

    def set_prob(self, mask: torch.Tensor, cls: int, prob: float) -> None:
        self.prob[:, mask] = 0.0
        self.prob[cls + 1, mask] = prob
        self.prob[0, mask] = 1.0 - prob

    def peak(self, cls: int, y: int, x: int, value: float) -> None:
        gaussian = gaussians(cls, [(x, y)])[cls]
        self.center[cls] = torch.maximum(self.center[cls], value * gaussian)

    def point_offsets(self, mask: torch.Tensor, y: float, x: float, noise: float = 0.0) -> None:
        """Predicted offsets of ``mask`` voting for (y, x) (+ noise on both axes)."""
        self.offset[0][mask] = (y - YS + noise)[mask]
        self.offset[1][mask] = (x - XS + noise)[mask]


def batch(*scenes: Scene) -> dict[str, torch.Tensor]:
    num = max(1, max(len(s.component_class) for s in scenes))
    component_class = torch.full((len(scenes), num), -1, dtype=torch.long)
    for b, s in enumerate(scenes):
        component_class[b, : len(s.component_class)] = torch.tensor(s.component_class)
    return {
        "center": torch.stack([s.center for s in scenes]),
        "offset": torch.stack([s.offset for s in scenes]),
        "seg_prob": torch.stack([s.prob for s in scenes]),
        "component_map": torch.stack([s.component_map for s in scenes]),
        "component_class": component_class,
    }


def refine(*scenes: Scene, **kwargs) -> dict[str, torch.Tensor]:
    return refine_image_level(**batch(*scenes), num_classes=C, **kwargs)


def expected_offset(mask: torch.Tensor, y: float, x: float) -> torch.Tensor:
    return torch.stack([torch.where(mask, y - YS, 0.0), torch.where(mask, x - XS, 0.0)])


def gaussians(cls: int, centers_xy: list[tuple[float, float]]) -> torch.Tensor:
    """[C, H, W] heatmap with peak-1 Gaussians at ``centers_xy`` in channel ``cls``."""
    centers = torch.tensor(centers_xy, dtype=torch.float32).reshape(-1, 2)
    return center_heatmap(centers, torch.full((len(centers),), cls), C, (H, W))


def two_objects_scene() -> tuple[Scene, torch.Tensor, torch.Tensor]:
    """A class-1 component holding two objects: left peak 0.8 at (16, 12), right 0.6 at (16, 50).

    The peaks are further apart than the NMS window's radius (20), else the left Gaussian's
    shoulder would suppress the lower right peak.
    """
    scene = Scene()
    blob = scene.component(1, (8, 4, 24, 60))
    left = blob & (XS < 31)
    right = blob & (XS >= 31)
    scene.set_prob(left, 1, 0.9)
    scene.set_prob(right, 1, 0.5)
    scene.peak(1, 16, 12, 0.8)
    scene.peak(1, 16, 50, 0.6)
    # Votes land near, not exactly on, the peaks; targets must point exactly at them.
    scene.point_offsets(left, 16, 12, noise=1.5)
    scene.point_offsets(right, 16, 50, noise=-1.5)
    return scene, left, right


# --------------------------------------------------------------------------------------
# refine_image_level
# --------------------------------------------------------------------------------------


def test_component_with_two_objects_splits_into_two_instances():
    scene, left, right = two_objects_scene()
    out = refine(scene)
    assert set(out) == {"center", "offset", "weight"}
    assert out["center"].shape == (1, C, H, W)
    assert out["offset"].shape == (1, 2, H, W)
    assert out["weight"].shape == (1, 1, H, W)

    expected = expected_offset(left, 16, 12) + expected_offset(right, 16, 50)
    torch.testing.assert_close(out["offset"][0], expected)
    expected_weight = torch.zeros(H, W)
    expected_weight[left] = 0.8 * 0.9
    expected_weight[right] = 0.6 * 0.5
    torch.testing.assert_close(out["weight"][0, 0], expected_weight)
    torch.testing.assert_close(out["center"][0], gaussians(1, [(12, 16), (50, 16)]))


def test_component_without_peak_is_one_instance_at_its_centroid():
    scene = Scene()
    blob = scene.component(0, (2, 3, 10, 15), prob=0.7)  # centroid (y, x) = (5.5, 8.5)
    scene.center[0] = 0.2  # below the 0.3 threshold everywhere
    scene.point_offsets(blob, 0, 0)  # the votes are irrelevant to a single instance
    out = refine(scene)
    torch.testing.assert_close(out["weight"][0, 0], torch.where(blob, 0.7, 0.0))
    torch.testing.assert_close(out["offset"][0], expected_offset(blob, 5.5, 8.5))
    torch.testing.assert_close(out["center"][0], gaussians(0, [(8.5, 5.5)]))


def test_centerless_weight_is_the_mean_probability_of_the_component():
    scene = Scene()
    blob = scene.component(2, (0, 0, 10, 10))
    scene.set_prob(blob & (XS < 5), 2, 1.0)
    scene.set_prob(blob & (XS >= 5), 2, 0.5)
    out = refine(scene)
    torch.testing.assert_close(out["weight"][0, 0], torch.where(blob, 0.75, 0.0))


def test_component_with_more_than_max_instances_peaks_is_skipped():
    scene = Scene()
    crowded = scene.component(1, (0, 0, 8, 40))
    for x in (5, 20, 35):
        scene.center[1, 4, x] = 0.9  # isolated single-pixel peaks
    quiet = scene.component(2, (20, 0, 30, 10), prob=0.6)
    out = refine(scene, max_instances=2, nms_kernel=3)
    assert out["weight"][0, 0][crowded].eq(0).all()
    assert out["offset"][0][:, crowded].eq(0).all()
    assert out["center"][0, 1].eq(0).all()
    # Other components of the same image are still refined.
    torch.testing.assert_close(out["weight"][0, 0][quiet], torch.full((100,), 0.6))

    # With room for three instances the same component is split three ways.
    out = refine(scene, max_instances=3, nms_kernel=3)
    assert out["weight"][0, 0][crowded].gt(0).all()
    assert out["center"][0, 1, 4, [5, 20, 35]].eq(1).all()


def test_peak_of_another_class_inside_the_component_is_ignored():
    scene = Scene()
    blob = scene.component(1, (4, 4, 14, 14), prob=0.6)  # centroid (8.5, 8.5)
    scene.peak(0, 8, 8, 0.9)  # class 0 peak inside the class-1 component
    out = refine(scene)
    torch.testing.assert_close(out["weight"][0, 0], torch.where(blob, 0.6, 0.0))
    torch.testing.assert_close(out["center"][0], gaussians(1, [(8.5, 8.5)]))
    assert out["center"][0, 0].eq(0).all()


def test_peaks_at_or_below_the_threshold_are_ignored():
    scene, left, right = two_objects_scene()
    scene.center[1] = 0.0
    scene.peak(1, 16, 12, 0.8)
    scene.peak(1, 16, 50, 0.3)  # not above the threshold: the right pixels join the left peak
    out = refine(scene, threshold=0.3)
    blob = left | right
    torch.testing.assert_close(out["offset"][0], expected_offset(blob, 16, 12))
    mean_prob = (0.9 * left.sum() + 0.5 * right.sum()) / blob.sum()
    torch.testing.assert_close(out["weight"][0, 0], torch.where(blob, 0.8 * mean_prob, 0.0))
    torch.testing.assert_close(out["center"][0], gaussians(1, [(12, 16)]))


def test_peak_no_pixel_votes_for_is_dropped():
    scene, left, right = two_objects_scene()
    scene.point_offsets(left | right, 16, 12)  # every pixel votes for the left peak
    out = refine(scene)
    torch.testing.assert_close(out["center"][0], gaussians(1, [(12, 16)]))
    assert out["weight"][0, 0][left | right].gt(0).all()


def test_center_score_above_one_is_clipped():
    scene = Scene()
    blob = scene.component(0, (0, 0, 12, 12), prob=0.5)
    scene.peak(0, 6, 6, 1.4)
    out = refine(scene)
    torch.testing.assert_close(out["weight"][0, 0], torch.where(blob, 0.5, 0.0))


def test_batch_items_are_independent():
    first, _, _ = two_objects_scene()
    second = Scene()
    # Same class and place as the first image's peaks, but one centerless component and
    # one with its own peak: nothing may leak between the images.
    second.component(1, (8, 4, 24, 20), prob=0.4)
    b = second.component(0, (0, 30, 30, 46), prob=0.9)
    second.peak(0, 10, 38, 0.7)
    second.point_offsets(b, 10, 38)
    together = refine(first, second)
    for index, scene in enumerate((first, second)):
        alone = refine(scene)
        for key in ("center", "offset", "weight"):
            torch.testing.assert_close(together[key][index], alone[key][0], rtol=0, atol=1e-5)


def test_no_components_gives_empty_targets():
    scene = Scene()
    scene.peak(1, 10, 10, 0.9)  # a peak outside any component
    data = batch(scene)
    data["component_class"] = torch.zeros(1, 0, dtype=torch.long)
    out = refine_image_level(**data, num_classes=C)
    for key in ("center", "offset", "weight"):
        assert out[key].eq(0).all()


def test_inputs_are_not_modified_and_gradients_do_not_flow():
    scene, _, _ = two_objects_scene()
    data = batch(scene)
    data["center"].requires_grad_(True)
    before = {k: v.detach().clone() for k, v in data.items()}
    out = refine_image_level(**data, num_classes=C)
    assert not any(v.requires_grad for v in out.values())
    for key, value in data.items():
        assert torch.equal(value.detach(), before[key])


def test_bad_inputs_are_rejected():
    scene, _, _ = two_objects_scene()
    data = batch(scene)
    with pytest.raises(ValueError, match="center"):
        refine_image_level(**data, num_classes=C + 1)
    with pytest.raises(ValueError, match="seg_prob"):
        refine_image_level(**{**data, "seg_prob": data["seg_prob"][:, :C]}, num_classes=C)
    with pytest.raises(ValueError, match="component_map"):
        refine_image_level(**{**data, "component_map": data["component_map"] * 5}, num_classes=C)
    with pytest.raises(ValueError, match="class -1"):
        refine_image_level(**{**data, "component_class": torch.full((1, 1), -1)}, num_classes=C)
    with pytest.raises(ValueError, match="component_class"):
        refine_image_level(**{**data, "component_class": torch.full((1, 1), C)}, num_classes=C)


# --------------------------------------------------------------------------------------
# refine_point_level
# --------------------------------------------------------------------------------------


def test_point_level_splits_a_blob_between_its_points():
    semantic = torch.zeros(2, H, W, dtype=torch.long)
    blob = torch.zeros(H, W, dtype=torch.bool)
    blob[8:24, 4:44] = True
    left, right = blob & (XS < 23), blob & (XS >= 23)
    semantic[0][blob] = 2  # class 1
    other = torch.zeros(H, W, dtype=torch.bool)
    other[26:32, 0:10] = True
    semantic[0][other] = 1  # class 0: no point of class 0 in this image
    semantic[0, 0:4, 0:4] = 255
    semantic[1][blob] = 2  # image 1: same blob, its own single point
    offset = torch.zeros(2, 2, H, W)
    scene = Scene()
    scene.point_offsets(left, 16, 12.5, noise=1.0)
    scene.point_offsets(right, 15, 34, noise=-1.0)
    scene.point_offsets(other | (semantic[0] == 255), 0, 0)
    offset[0] = scene.offset
    offset[1] = scene.offset
    points_xy = torch.tensor(
        [[[12.5, 16.0], [99.0, 99.0], [34.0, 15.0]], [[40.0, 30.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    point_classes = torch.tensor([[1, -1, 1], [1, -1, -1]])

    out = refine_point_level(offset, semantic, points_xy, point_classes, C)
    assert set(out) == {"offset", "weight"}
    expected = expected_offset(left, 16, 12.5) + expected_offset(right, 15, 34)
    torch.testing.assert_close(out["offset"][0], expected)
    torch.testing.assert_close(out["weight"][0, 0], blob.float())
    # Image 1 has one point of class 1: the whole blob points at it, whatever the votes.
    torch.testing.assert_close(out["offset"][1], expected_offset(blob, 30, 40))
    torch.testing.assert_close(out["weight"][1, 0], blob.float())


def test_point_level_uses_only_points_of_the_pixel_class():
    semantic = torch.zeros(1, H, W, dtype=torch.long)
    semantic[0, 0:10, 0:10] = 1  # class 0
    semantic[0, 20:30, 20:30] = 3  # class 2
    offset = torch.zeros(1, 2, H, W)  # votes at the pixels themselves
    # The class-0 point sits inside the class-2 region, the class-2 point inside class 0.
    points_xy = torch.tensor([[[25.0, 25.0], [5.0, 5.0]]])
    point_classes = torch.tensor([[0, 2]])
    out = refine_point_level(offset, semantic, points_xy, point_classes, C)
    class0 = semantic[0] == 1
    class2 = semantic[0] == 3
    expected = expected_offset(class0, 25, 25) + expected_offset(class2, 5, 5)
    torch.testing.assert_close(out["offset"][0], expected)
    torch.testing.assert_close(out["weight"][0, 0], (class0 | class2).float())


def test_point_level_without_points_gives_zero_weight():
    semantic = torch.ones(1, H, W, dtype=torch.long)
    no_points = torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.long)
    out = refine_point_level(torch.randn(1, 2, H, W), semantic, *no_points, C)
    assert out["weight"].eq(0).all() and out["offset"].eq(0).all()


def test_point_level_bad_inputs_are_rejected():
    semantic = torch.ones(1, H, W, dtype=torch.long)
    offset = torch.zeros(1, 2, H, W)
    with pytest.raises(ValueError, match="point_classes"):
        refine_point_level(offset, semantic, torch.zeros(1, 1, 2), torch.tensor([[C]]), C)
    with pytest.raises(ValueError, match="points_xy"):
        refine_point_level(offset, semantic, torch.zeros(1, 2, 3), torch.tensor([[0, 0]]), C)
    with pytest.raises(ValueError, match="semantic_map"):
        refine_point_level(offset, semantic[:, :5], torch.zeros(1, 1, 2), torch.tensor([[0]]), C)


def test_higher_peak_of_a_neighbouring_component_does_not_suppress_this_one():
    """Self-refinement suppresses centers inside each component, not on the whole class map."""
    scene = Scene()
    near = scene.component(1, (8, 4, 24, 24), prob=0.9)
    far = scene.component(1, (8, 28, 24, 48), prob=0.9)  # 4 px away: inside one NMS window
    scene.peak(1, 16, 14, 0.9)
    scene.peak(1, 16, 38, 0.5)
    scene.point_offsets(near, 16, 14)
    scene.point_offsets(far, 16, 38)
    out = refine(scene)
    torch.testing.assert_close(out["center"][0], gaussians(1, [(14, 16), (38, 16)]))
    expected_weight = torch.zeros(H, W)
    expected_weight[near] = 0.9 * 0.9
    expected_weight[far] = 0.5 * 0.9
    torch.testing.assert_close(out["weight"][0, 0], expected_weight)


# -- the semantic target (train.seg_self_refine) --------------------------------------------
def _two_colour_image() -> torch.Tensor:
    """[3, H, W] normalised: a bright square (rows 8-24, columns 16-40) on a dark ground."""
    image = torch.full((3, H, W), -1.0)
    image[:, 8:24, 16:40] = 1.0
    return image


def test_semantic_target_snaps_a_blurry_prediction_to_the_image_edge():
    # The network calls class 1 a square four pixels too wide on every side; the image's
    # edge, not the prediction, decides the target.
    logits = torch.zeros(1, C + 1, H, W)
    logits[0, 0] = 2.0
    logits[0, 2, 4:28, 12:44] = 4.0
    semantic = torch.zeros(1, H, W, dtype=torch.long)
    semantic[0, 8:24, 16:40] = 2
    target = refine_semantic(_two_colour_image()[None], logits, semantic, iterations=10, texture_window=1,
                             stride=1, dilations=[1, 2, 4])
    truth = torch.zeros(H, W, dtype=torch.long)
    truth[8:24, 16:40] = 2
    wrong_before = (logits[0].argmax(0) != truth).sum()
    assert (target[0] != truth).sum() < 0.25 * wrong_before


def test_semantic_target_keeps_unknown_pixels_and_the_images_classes():
    # Class 3 (channel 3) scores highest everywhere but is not in the WSSS map: never a target.
    logits = torch.zeros(2, C + 1, H, W)
    logits[:, 3] = 5.0
    logits[:, 1] = 1.0
    semantic = torch.zeros(2, H, W, dtype=torch.long)
    semantic[:, :, :8] = 255
    semantic[0, 8:24, 16:40] = 1
    image = _two_colour_image()
    target = refine_semantic(torch.stack([image, image]), logits, semantic, iterations=5, texture_window=1,
                             stride=1, dilations=[1, 2])
    assert (target[:, :, :8] == 255).all()
    assert set(target[0, :, 8:].unique().tolist()) == {1}  # image 0 has class 1: it wins over background
    assert set(target[1, :, 8:].unique().tolist()) == {0}  # image 1 has background only
