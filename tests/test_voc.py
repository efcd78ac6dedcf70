"""The VOC reader on a real PASCAL VOC 2012 image, and its errors on broken roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bestie.data.png import read_label_png, write_label_png
from bestie.data.sources.base import interior_points
from bestie.data.sources.voc import VOC_CLASSES, VOCDataset, read_class_names
from bestie.errors import BestieError

ID = "2007_000063"
CHAIR, DOG = VOC_CLASSES.index("chair"), VOC_CLASSES.index("dog")


def test_real_voc_image_facts(voc_fixture_root: Path) -> None:
    data = VOCDataset(voc_fixture_root, "train")
    assert data.ids == [ID]
    assert data.class_names == VOC_CLASSES  # no classes.txt: the 20 VOC classes
    assert data.image_size(ID) == (500, 375)
    image = data.read_image(ID)
    assert image.shape == (375, 500, 3) and image.dtype == np.uint8

    class_map = data.read_class_map(ID)
    values, counts = np.unique(class_map, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 72224, 9: 78930, 12: 27632, 255: 8714}
    object_map = data.read_object_map(ID)
    values, counts = np.unique(object_map, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 72224, 1: 27632, 2: 78930, 255: 8714}

    gt = data.ground_truth(ID)
    assert len(gt) == 2
    assert [VOC_CLASSES[c] for c in gt.classes] == ["dog", "chair"]
    assert gt.masks.sum(axis=(1, 2)).tolist() == [27632, 78930]
    assert data.image_labels(ID) == sorted([CHAIR, DOG])
    assert data.annotation_labels(ID) == sorted([CHAIR, DOG])


def test_points_lie_inside_their_instances(voc_fixture_root: Path) -> None:
    data = VOCDataset(voc_fixture_root, "val")
    gt = data.ground_truth(ID)
    points, classes = data.points(ID)
    assert classes.tolist() == gt.classes.tolist()
    for mask, (x, y) in zip(gt.masks, points):
        assert mask[int(y), int(x)]


def test_interior_point_is_farthest_from_border() -> None:
    mask = np.zeros((1, 9, 15), dtype=bool)
    mask[0, 2:9, 3:10] = True  # 7 x 7 box: only its middle pixel is 4 px deep
    np.testing.assert_array_equal(interior_points(mask), [[6, 5]])
    ring = np.zeros((1, 21, 21), dtype=bool)
    yy, xx = np.mgrid[:21, :21]
    ring[0] = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 100) & ((yy - 10) ** 2 + (xx - 10) ** 2 >= 36)
    x, y = interior_points(ring)[0]
    assert ring[0, int(y), int(x)]  # the centroid of a ring lies outside it; this does not


def test_center_points_file_overrides_derived_points(voc_copy: Path) -> None:
    (voc_copy / "Center_points").mkdir()
    (voc_copy / "Center_points" / f"{ID}.txt").write_text("10 20 11 1.0\n30.5 40 8 0.9\n")
    points, classes = VOCDataset(voc_copy, "train").points(ID)
    np.testing.assert_array_equal(points, [[10, 20], [30.5, 40]])
    assert classes.tolist() == [11, 8]


def test_classes_txt_sets_class_names(voc_copy: Path) -> None:
    names = [f"c{i}" for i in range(20)]
    (voc_copy / "classes.txt").write_text("\n".join(names) + "\n")
    assert VOCDataset(voc_copy, "train").class_names == tuple(names)


def test_labels_from_annotations_when_masks_are_missing(voc_copy: Path) -> None:
    (voc_copy / "SegmentationClass" / f"{ID}.png").unlink()
    data = VOCDataset(voc_copy, "train")
    assert not data.has_masks(ID)
    assert data.image_labels(ID) == sorted([CHAIR, DOG])


# -- bad input: one clear error naming the file -------------------------------------------


def _error(fn) -> str:
    with pytest.raises(BestieError) as info:
        fn()
    return str(info.value)


def test_missing_root(tmp_path: Path) -> None:
    assert "dataset folder not found" in _error(lambda: VOCDataset(tmp_path / "nope", "train"))


def test_missing_split_file(voc_copy: Path) -> None:
    message = _error(lambda: VOCDataset(voc_copy, "train_aug"))
    assert "train_aug.txt" in message and "not found" in message


def test_empty_split(voc_copy: Path) -> None:
    (voc_copy / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    assert "split is empty" in _error(lambda: VOCDataset(voc_copy, "train"))


def test_image_without_mask_or_annotation(voc_copy: Path) -> None:
    (voc_copy / "SegmentationClass" / f"{ID}.png").unlink()
    (voc_copy / "Annotations" / f"{ID}.xml").unlink()
    message = _error(lambda: VOCDataset(voc_copy, "train").image_labels(ID))
    assert f"{ID}.png" in message and "no mask" in message


def test_listed_image_missing(voc_copy: Path) -> None:
    (voc_copy / "JPEGImages" / f"{ID}.jpg").unlink()
    assert f"{ID}.jpg" in _error(lambda: VOCDataset(voc_copy, "train").read_image(ID))


def test_mask_size_differs_from_image(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClass" / f"{ID}.png"
    write_label_png(path, read_label_png(path)[:-1])
    message = _error(lambda: VOCDataset(voc_copy, "train").read_class_map(ID))
    assert "500x374" in message and "500x375" in message


def test_truncated_image(voc_copy: Path) -> None:
    path = voc_copy / "JPEGImages" / f"{ID}.jpg"
    path.write_bytes(path.read_bytes()[:5000])
    message = _error(lambda: VOCDataset(voc_copy, "train").read_image(ID))
    assert f"{ID}.jpg" in message and "truncated" in message


def test_not_an_image(voc_copy: Path) -> None:
    (voc_copy / "JPEGImages" / f"{ID}.jpg").write_text("hello")
    assert "unreadable" in _error(lambda: VOCDataset(voc_copy, "train").read_image(ID))


def test_unknown_class_name_in_annotation(voc_copy: Path) -> None:
    path = voc_copy / "Annotations" / f"{ID}.xml"
    path.write_text(path.read_text().replace("<name>dog</name>", "<name>dragon</name>"))
    assert "unknown class name 'dragon'" in _error(
        lambda: VOCDataset(voc_copy, "train").annotation_labels(ID)
    )


def test_mask_value_beyond_the_class_list(voc_copy: Path) -> None:
    (voc_copy / "classes.txt").write_text("a\nb\n")
    assert "no class" in _error(lambda: VOCDataset(voc_copy, "train").read_class_map(ID))


def test_class_without_an_instance(voc_copy: Path) -> None:
    """The dog's pixels are still dog in SegmentationClass but no instance in SegmentationObject:
    the image would keep 'dog' as a label with no instance or point to learn or evaluate it by."""
    path = voc_copy / "SegmentationObject" / f"{ID}.png"
    objects = read_label_png(path)
    objects[objects == 1] = 0  # instance 1 is the dog
    write_label_png(path, objects)
    message = _error(lambda: VOCDataset(voc_copy, "train").ground_truth(ID))
    assert message.endswith(
        f"SegmentationClass/{ID}.png: image {ID} has class 'dog' but SegmentationObject/{ID}.png "
        "holds no instance of it"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "class list not found"), ("\n\n", "no class names"), ("a\nb\na\n", "a class name appears twice"),
     (b"\xff\xfe\x00", "not a text file of class names")],
)
def test_bad_class_lists(tmp_path: Path, text: str | bytes | None, message: str) -> None:
    path = tmp_path / "classes.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    assert _error(lambda: read_class_names(path)) == f"{path}: {message}"


def test_rgb_mask_is_rejected(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClass" / f"{ID}.png"
    Image.open(path).convert("RGB").save(path)
    assert "mode RGB" in _error(lambda: VOCDataset(voc_copy, "train").read_class_map(ID))
