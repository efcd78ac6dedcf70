from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from bestie.coco import (
    annotation_masks,
    build_coco,
    coco_categories,
    decode_segmentation,
    encode_masks,
    ground_truth_by_image,
    load_coco_gt,
    load_results,
    masks_to_annotations,
    masks_to_results,
    rle_areas,
    segmentation_to_rle,
)
from bestie.errors import BestieError


def box_mask(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def small_gt() -> dict:
    """One 10x10 image, one instance of class 1 (category 2)."""
    mask = box_mask((10, 10), (1, 4), (2, 7))
    annotations = masks_to_annotations(mask[None], np.array([1]), None, image_id=7)
    images = [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 10}]
    return build_coco(images, annotations, ["cat", "dog"])


# --------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("shape", [(10, 10), (7, 13), (13, 7), (1, 1)])
def test_round_trip_random_empty_full(shape):
    rng = np.random.default_rng(0)
    masks = np.stack([rng.random(shape) < 0.4, np.zeros(shape, bool), np.ones(shape, bool)])
    for mask, rle in zip(masks, encode_masks(masks)):
        assert isinstance(rle["counts"], str)
        assert rle["size"] == list(shape)
        json.dumps(rle)
        np.testing.assert_array_equal(decode_segmentation(rle), mask)
        np.testing.assert_array_equal(decode_segmentation(encode_masks(mask[None])[0]), mask)


def test_decode_accepts_bytes_counts():
    mask = box_mask((5, 8), (1, 3), (2, 6))
    rle = encode_masks(mask[None])[0]
    np.testing.assert_array_equal(decode_segmentation({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_decode_uncompressed_rle_is_column_major():
    # Fortran order over a 2x3 image: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2); runs 1 off, 2 on, 3 off.
    expected = np.array([[0, 1, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(decode_segmentation({"size": [2, 3], "counts": [1, 2, 3]}), expected)


def test_decode_polygon_covers_its_pixels():
    mask = decode_segmentation([[2, 2, 6, 2, 6, 6, 2, 6]], height=10, width=10)
    np.testing.assert_array_equal(mask, box_mask((10, 10), (2, 6), (2, 6)))


def test_segmentation_to_rle_normalises_to_str_counts():
    rle = segmentation_to_rle([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert isinstance(rle["counts"], str) and rle["size"] == [10, 10]
    np.testing.assert_array_equal(decode_segmentation(rle), box_mask((10, 10), (2, 6), (2, 6)))


@pytest.mark.parametrize(
    "segmentation, height, width, fault",
    [
        ({"size": [4, 4], "counts": "0"}, 5, 5, "image size"),
        ({"counts": "0"}, None, None, "size"),
        ({"size": [2, 3], "counts": [1, 2]}, None, None, "sum"),
        ([[1, 1, 3, 3]], 10, 10, "3 points"),
        ([[1, 1, 3, 3, 1, 3]], None, None, "height and width"),
        ([], 10, 10, "empty"),
        ("abc", 10, 10, "RLE dict or a list"),
    ],
)
def test_bad_segmentation_raises(segmentation, height, width, fault):
    with pytest.raises(BestieError, match=fault):
        decode_segmentation(segmentation, height, width)


def test_rle_areas_beyond_255_masks():
    masks = np.zeros((300, 4, 5), dtype=bool)
    masks[np.arange(300), 0, 0] = True
    masks[::2, 1:3, 1:4] = True  # even masks: 1 + 6 px
    areas = rle_areas(encode_masks(masks))
    np.testing.assert_array_equal(areas, np.where(np.arange(300) % 2 == 0, 7, 1))
    assert rle_areas([]).shape == (0,)


def test_encode_rejects_wrong_rank():
    with pytest.raises(ValueError):
        encode_masks(np.zeros((3, 4), bool))


def test_annotation_masks_decode_every_form_in_order():
    box = box_mask((10, 10), (2, 6), (2, 6))
    annotations = [
        {"segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},  # polygon
        {"segmentation": encode_masks(~box[None])[0]},  # compressed RLE
    ]
    np.testing.assert_array_equal(annotation_masks(annotations, 10, 10), np.stack([box, ~box]))
    assert annotation_masks([], 4, 5).shape == (0, 4, 5)


def test_ground_truth_by_image_keeps_every_image_and_zero_based_classes():
    coco = small_gt()
    coco["images"].append({"id": 8, "file_name": "b.jpg", "height": 3, "width": 4})
    truth = ground_truth_by_image(coco)
    assert sorted(truth) == [7, 8]
    np.testing.assert_array_equal(truth[7].masks, box_mask((10, 10), (1, 4), (2, 7))[None])
    assert truth[7].classes.tolist() == [1] and truth[7].classes.dtype == np.int64
    assert truth[8].masks.shape == (0, 3, 4) and len(truth[8]) == 0


# --------------------------------------------------------------------------- annotations


def test_masks_to_annotations_fields():
    masks = np.stack(
        [box_mask((6, 9), (1, 4), (2, 7)), np.zeros((6, 9), bool), np.ones((6, 9), bool)]
    )  # 15 px, empty, 54 px
    scores = np.array([0.9, 0.8, 0.7])
    annotations = masks_to_annotations(masks, np.array([0, 1, 2]), scores, image_id=3, start_id=10)
    assert len(annotations) == 2  # the empty mask is skipped
    first, second = annotations
    assert first["id"] == 10 and second["id"] == 11
    assert first["image_id"] == 3 and first["iscrowd"] == 0
    assert first["category_id"] == 1 and second["category_id"] == 3  # class + 1, skipping the empty one
    assert first["bbox"] == [2.0, 1.0, 5.0, 3.0] and second["bbox"] == [0.0, 0.0, 9.0, 6.0]
    assert first["area"] == 15 and second["area"] == 54 and isinstance(first["area"], int)
    assert first["score"] == pytest.approx(0.9) and second["score"] == pytest.approx(0.7)
    np.testing.assert_array_equal(decode_segmentation(first["segmentation"]), masks[0])
    json.dumps(annotations)


def test_masks_to_annotations_without_scores_has_no_score_key():
    annotations = masks_to_annotations(box_mask((4, 4), (0, 2), (0, 2))[None], [0], None, image_id=1)
    assert "score" not in annotations[0]


def test_masks_to_annotations_no_masks():
    assert masks_to_annotations(np.zeros((0, 5, 5), bool), np.zeros(0, int), None, image_id=1) == []


def test_masks_to_annotations_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        masks_to_annotations(np.zeros((2, 4, 4), bool), [0], None, image_id=1)


def test_masks_to_results_format():
    masks = np.stack([box_mask((5, 5), (0, 2), (0, 2)), np.zeros((5, 5), bool)])
    results = masks_to_results(masks, np.array([4, 0]), np.array([0.25, 0.5], np.float32), image_id=9)
    assert len(results) == 1
    assert set(results[0]) == {"image_id", "category_id", "segmentation", "score"}
    assert results[0]["image_id"] == 9 and results[0]["category_id"] == 5
    assert results[0]["score"] == pytest.approx(0.25)
    json.dumps(results)


def test_coco_categories_are_one_based():
    assert coco_categories(["a", "b"]) == [
        {"id": 1, "name": "a", "supercategory": "object"},
        {"id": 2, "name": "b", "supercategory": "object"},
    ]


def test_built_dict_loads_in_pycocotools_and_round_trips(tmp_path, capsys):
    rng = np.random.default_rng(1)
    masks = rng.random((4, 7, 11)) < 0.5
    masks[1] = False
    masks[2] = True
    annotations = masks_to_annotations(masks, np.array([0, 1, 1, 0]), None, image_id=5)
    images = [{"id": 5, "file_name": "x.jpg", "height": 7, "width": 11}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(build_coco(images, annotations, ["a", "b"])))

    coco = COCO(str(path))
    decoded = np.stack([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[5]))]).astype(bool)
    np.testing.assert_array_equal(decoded, masks[[0, 2, 3]])
    capsys.readouterr()

    ours = load_coco_gt(path)
    assert capsys.readouterr().out == ""  # pycocotools' chatter is swallowed
    assert sorted(ours.cats) == [1, 2] and len(ours.anns) == 3


# --------------------------------------------------------------------------- loading ground truth


def test_load_coco_gt_accepts_dict_and_coco_object():
    coco = load_coco_gt(small_gt())
    assert list(coco.imgs) == [7]
    assert load_coco_gt(coco) is coco


@pytest.mark.parametrize(
    "corrupt, fault",
    [
        (lambda d: d.pop("annotations"), "'annotations' must be a list"),
        (lambda d: d["images"][0].pop("height"), r"images\[0\] has no 'height'"),
        (lambda d: d["annotations"][0].pop("area"), r"annotations\[0\] has no 'area'"),
        (lambda d: d["annotations"][0].update(image_id=99), "unknown image_id 99"),
        (lambda d: d["annotations"][0].update(category_id=3), "unknown category_id 3"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate ids"),
        (lambda d: d["annotations"][0]["segmentation"].update(size=[10, 9]), "image size"),
    ],
)
def test_load_coco_gt_rejects_malformed_file(tmp_path, corrupt, fault):
    dataset = small_gt()
    corrupt(dataset)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    with pytest.raises(BestieError, match=f"^{path}: .*{fault}"):
        load_coco_gt(path)


def test_load_coco_gt_missing_file(tmp_path):
    with pytest.raises(BestieError, match="file not found"):
        load_coco_gt(tmp_path / "nope.json")


# --------------------------------------------------------------------------- loading results


def one_result(**override) -> dict:
    result = {
        "image_id": 7,
        "category_id": 2,
        "segmentation": encode_masks(box_mask((10, 10), (1, 4), (2, 7))[None])[0],
        "score": 0.5,
    }
    return {**result, **override}


def test_load_results_validates_and_copies():
    gt = load_coco_gt(small_gt())
    polygon = one_result(segmentation=[[2, 2, 6, 2, 6, 6, 2, 6]])
    entries = [one_result(), polygon]
    loaded = load_results(entries, gt)
    assert polygon["segmentation"] == [[2, 2, 6, 2, 6, 6, 2, 6]]  # input untouched
    assert isinstance(loaded[1]["segmentation"]["counts"], str)  # polygons become RLE
    np.testing.assert_array_equal(decode_segmentation(loaded[1]["segmentation"]), box_mask((10, 10), (2, 6), (2, 6)))
    assert load_results([], gt) == []


def test_load_results_from_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([one_result()]))
    assert len(load_results(path, load_coco_gt(small_gt()))) == 1
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(BestieError, match=f"^{path}: expected a list"):
        load_results(path, load_coco_gt(small_gt()))


@pytest.mark.parametrize(
    "entry, fault",
    [
        (one_result(image_id=8), "image_id 8, not in the ground truth"),
        (one_result(category_id=3), "category_id 3, not in the ground truth"),
        ({k: v for k, v in one_result().items() if k != "score"}, "has no 'score'"),
        ({k: v for k, v in one_result().items() if k != "segmentation"}, "has no 'segmentation'"),
        (one_result(score=float("nan")), "finite number"),
        (one_result(score="high"), "finite number"),
        (one_result(segmentation=encode_masks(np.ones((1, 10, 11), bool))[0]), "image size"),
        ("not a dict", "not an object"),
    ],
)
def test_load_results_rejects_bad_entries(entry, fault):
    with pytest.raises(BestieError, match=rf"^results: \[1\].*{fault}"):
        load_results([one_result(), entry], load_coco_gt(small_gt()))
