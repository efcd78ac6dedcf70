"""Dataset sources: the COCO reading of a dataset equals its VOC reading; COCO specifics
(sparse ids, polygons, crowd); every bad COCO input is one line naming the file and entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bestie.coco import ground_truth_by_image
from bestie.config import DATA_FORMATS, SynthesizeParams
from bestie.data.manifest import class_map_path, load_manifest, object_map_path
from bestie.data.png import read_label_png
from bestie.data.prepare import prepare_dataset
from bestie.data.sources import SOURCES
from bestie.data.sources.base import label_maps
from bestie.data.sources.coco import CocoSource
from bestie.data.sources.voc import VOCSource
from bestie.data.synthetic import generate
from bestie.data.synthetic.coco import CATEGORY_ID_STEP, COCO_FILES, voc_to_coco
from bestie.evaluate_split import predict_split
from bestie.errors import BestieError
from bestie.structures import IGNORE, GroundTruth, Instances

from .helpers import run_stage, write_params

SPLITS = {"train": "train", "val": "val"}
ID = "2007_000063"


def coco_source(root: Path, points: dict | None = None) -> CocoSource:
    return CocoSource(
        root, {s: COCO_FILES[s][0] for s in SPLITS}, {s: COCO_FILES[s][1] for s in SPLITS},
        points or {s: None for s in SPLITS},
    )


def _prepare(source, out: Path):
    prepare_dataset(source, out / "prepared", out / "val_gt.json")
    return load_manifest(out / "prepared/manifest.json")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A small synthetic dataset in both layouts, prepared from each."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SynthesizeParams(num_train=6, num_val=3))
    voc_to_coco(root, root, SPLITS)
    out = tmp_path_factory.mktemp("prepared")
    voc = _prepare(VOCSource(root, SPLITS), out / "voc")
    coco = _prepare(coco_source(root), out / "coco")
    return out, voc, coco


def test_registry_names_are_the_formats_params_accept():
    assert tuple(SOURCES) == DATA_FORMATS


def test_label_maps_later_instances_cover_earlier_and_crowd_is_void_where_uncovered():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :3] = True
    masks[1, 1:3, 1:] = True  # covers part of instance 0
    crowd = np.zeros((1, 4, 4), bool)
    crowd[0, 2:, :] = True  # under instance 1 in row 2
    class_map, object_map = label_maps(GroundTruth(masks, np.array([4, 0])), GroundTruth(crowd, np.array([2])), "x")
    assert object_map.tolist() == [[1, 1, 1, 0], [1, 2, 2, 2], [255, 2, 2, 2], [255, 255, 255, 255]]
    assert class_map.tolist() == [[5, 5, 5, 0], [5, 1, 1, 1], [255, 1, 1, 1], [255, 255, 255, 255]]
    none = GroundTruth(np.zeros((0, 4, 4), bool), np.zeros(0, np.int64))
    assert not label_maps(none, none, "x")[0].any()
    with pytest.raises(BestieError, match="img: 255 instances; label PNGs hold at most 254"):
        label_maps(GroundTruth(np.zeros((255, 2, 2), bool), np.zeros(255, np.int64)), none, "img")


def test_voc_and_coco_readings_give_the_same_manifest(both):
    _, voc, coco = both
    assert coco.class_names == voc.class_names
    assert coco.category_ids == tuple(CATEGORY_ID_STEP * c + 2 for c in range(len(voc.class_names)))
    for split in ("train", "val"):
        for a, b in zip(getattr(voc, split), getattr(coco, split), strict=True):
            assert (a.name, a.file_name, a.width, a.height, a.labels, a.has_masks) == (
                b.name, b.file_name, b.width, b.height, b.labels, b.has_masks)
            np.testing.assert_array_equal(a.points, b.points)
            assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
            assert "JPEGImages" in a.path and f"{split}2017" in b.path
    # the dataset's own image ids, not positions
    assert [r.image_id for r in coco.val] == [2 * i + 2 for i in range(len(coco.val))]


def test_voc_and_coco_readings_give_the_same_ground_truth(both):
    out, voc, coco = both
    for split, gt_file in (("train", "prepared/train_gt.json"), ("val", "val_gt.json")):
        truth = {k: ground_truth_by_image(json.loads((out / k / gt_file).read_text())) for k in ("voc", "coco")}
        for a, b in zip(getattr(voc, split), getattr(coco, split)):
            ours, theirs = truth["voc"][a.image_id], truth["coco"][b.image_id]
            np.testing.assert_array_equal(ours.masks, theirs.masks)
            np.testing.assert_array_equal(ours.classes, theirs.classes)
            voc_map = read_label_png(class_map_path(out / "voc/prepared", split, a.name))
            coco_map = read_label_png(class_map_path(out / "coco/prepared", split, b.name))
            known = voc_map != IGNORE  # VOC's void band is background in COCO
            np.testing.assert_array_equal(voc_map[known], coco_map[known])
            assert (coco_map[~known] == 0).all()


def test_predictions_score_against_the_original_coco_file(both, tmp_path):
    """Ground truth fed through predict_split scores 100 with pycocotools against the
    original instances_val2017.json: image and category ids are the dataset's own."""
    out, _, coco = both
    truth = ground_truth_by_image(json.loads((out / "coco/val_gt.json").read_text()))

    def predict(image, record):
        gt = truth[record.image_id]
        return Instances(gt.masks, gt.classes, np.ones(len(gt), np.float32))

    results = predict_split(predict, coco.val, coco.class_names, coco.category_ids, truth).results
    root = Path(coco.root)
    original = COCO(str(root / COCO_FILES["val"][0]))
    evaluation = COCOeval(original, original.loadRes(results), "segm")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


@pytest.fixture
def coco_root(tmp_path, voc_copy):
    """The real VOC image as a COCO root (image in train and val, 20 categories, sparse ids)."""
    root = tmp_path / "coco"
    voc_to_coco(voc_copy, root, SPLITS)
    return root


def _edit(root: Path, split: str, change) -> None:
    path = root / COCO_FILES[split][0]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_polygons_crowd_and_a_points_file(coco_root, tmp_path):
    def add(data):
        image_id = data["images"][0]["id"]
        dog = data["annotations"][0]["category_id"]
        data["annotations"] += [
            # a polygon square in the top-left corner
            {"id": 90, "image_id": image_id, "category_id": dog, "iscrowd": 0,
             "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]},
            # an uncompressed-RLE crowd region: the first 10 pixels of column 499 (column-major)
            {"id": 91, "image_id": image_id, "category_id": 2, "iscrowd": 1,
             "segmentation": {"size": [375, 500], "counts": [375 * 499, 10, 365]}},
        ]
    _edit(coco_root, "train", add)
    (coco_root / "points.json").write_text(json.dumps([{"image_id": 1, "category_id": 2, "x": 5.0, "y": 7.5}]))
    source = coco_source(coco_root, {"train": "points.json", "val": None})
    manifest = _prepare(source, tmp_path / "out")
    (record,) = manifest.train
    assert record.labels == (0, 8, 11)  # the crowd's class is present in the image
    np.testing.assert_array_equal(record.points, [[5.0, 7.5, 0]])
    class_map = read_label_png(class_map_path(tmp_path / "out/prepared", "train", ID))
    object_map = read_label_png(object_map_path(tmp_path / "out/prepared", "train", ID))
    assert (class_map[:10, 499] == IGNORE).all() and (object_map[:10, 499] == IGNORE).all()
    assert class_map[5, 5] == 12 and object_map[5, 5] == 3  # the polygon instance, dog (class 11)
    gt = json.loads((tmp_path / "out/prepared/train_gt.json").read_text())
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 0, 1]
    assert {a["category_id"] for a in gt["annotations"]} == {2, 26, 35}
    assert len(ground_truth_by_image(gt)[1]) == 3  # crowd regions are no instances


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        ("no_images", ["instances_val2017.json", "no 'images' list"]),
        ("no_annotations", ["instances_val2017.json", "no 'annotations' list"]),
        ("unknown_image", ["annotations[1] (id 2)", "image_id 77", "not in 'images'"]),
        ("unknown_category", ["annotations[0] (id 1)", "category_id 4", "not in 'categories'"]),
        ("short_polygon", ["instances_val2017.json: annotations[0] (id 1)", ">= 3 points"]),
        ("rle_size", ["instances_val2017.json: annotations[1] (id 2)", "RLE size [300, 500]"]),
        ("missing_image", ["images[0] (id 2)", f"{ID}.jpg: image not found"]),
        ("corrupt_image", ["images[0] (id 2)", f"{ID}.jpg", "unreadable"]),
        ("image_size", ["images[0] (id 2)", "is 500x375, the file says 400x375"]),
    ],
)
def test_prepare_rejects_bad_coco_input(tmp_path, coco_root, breakage, fragments):
    def change(data):
        if breakage in ("no_images", "no_annotations"):
            del data[breakage[3:]]
        elif breakage == "unknown_image":
            data["annotations"][1]["image_id"] = 77
        elif breakage == "unknown_category":
            data["annotations"][0]["category_id"] = 4
        elif breakage == "short_polygon":
            data["annotations"][0]["segmentation"] = [[0, 0, 10, 0]]
        elif breakage == "rle_size":
            data["annotations"][1]["segmentation"]["size"] = [300, 500]
        elif breakage == "image_size":
            data["images"][0]["width"] = 400
    image = coco_root / "val2017" / f"{ID}.jpg"
    if breakage == "missing_image":
        image.unlink()
    elif breakage == "corrupt_image":
        image.unlink()  # a hard link to the train image: replace, do not truncate in place
        image.write_bytes(b"\xff\xd8 not a jpeg")
    else:
        _edit(coco_root, "val", change)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", {"data": {"format": "coco", "root": str(coco_root)}})
    result = run_stage("prepare", project)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    written = [p for p in (project / "data").rglob("*") if p.is_file()] if (project / "data").exists() else []
    assert written == []
