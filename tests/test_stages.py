"""Stage entry points: real output on the VOC fixture; one clear line and nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bestie.data.manifest import load_manifest
from bestie.data.png import read_label_png, write_label_png
from bestie.metrics.instances import voc_instance_map

from .helpers import run_stage, write_params

ID = "2007_000063"


def _prepare(project: Path, root: Path, **data) -> tuple:
    write_params(project / "params.yaml", {"data": {"root": str(root), **data}})
    return run_stage("prepare", project)


def _assert_clean_failure(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_prepare_on_the_real_voc_image(tmp_path: Path, voc_fixture_root: Path) -> None:
    result = _prepare(tmp_path, voc_fixture_root)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "data/prepared/manifest.json")
    assert len(manifest.class_names) == 20
    (record,) = manifest.train
    assert (record.name, record.width, record.height) == (ID, 500, 375)
    assert record.labels == (8, 11)  # chair, dog
    assert sorted(record.points[:, 2].tolist()) == [8, 11]

    gt = json.loads((tmp_path / "data/eval/val_gt.json").read_text())
    assert gt["images"] == [{"id": 1, "file_name": f"{ID}.jpg", "width": 500, "height": 375}]
    assert [c["name"] for c in gt["categories"]][:3] == ["aeroplane", "bicycle", "bird"]
    assert sorted((a["category_id"], a["area"]) for a in gt["annotations"]) == [(9, 78930), (12, 27632)]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in gt["annotations"])
    # The ground truth scores 100 against itself through the project's evaluator.
    results = [dict(a, score=1.0) for a in gt["annotations"]]
    assert voc_instance_map(gt, results)["voc_map50"] == pytest.approx(100.0)

    # A stage replaces its own output (DVC deletes it first; run by hand, it is there).
    written = (tmp_path / "data/prepared/manifest.json").read_bytes()
    result = _prepare(tmp_path, voc_fixture_root)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/prepared/manifest.json").read_bytes() == written
    assert not list((tmp_path / "data").rglob(".*.tmp")) and not list((tmp_path / "data").rglob(".*.old"))


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        ("missing_root", ["dataset folder not found"]),
        ("missing_split", ["val.txt", "split file not found"]),
        ("empty_split", ["split is empty"]),
        ("missing_mask", [f"{ID}.png", "mask not found"]),
        ("mask_size", ["SegmentationClass", "500x300", "500x375"]),
        ("truncated_image", [f"{ID}.jpg", "truncated"]),
        ("unknown_class", ["unknown class name 'dragon'"]),
        ("class_without_instance", [f"image {ID} has class 'chair'", "holds no instance of it"]),
    ],
)
def test_prepare_rejects_bad_datasets(tmp_path: Path, voc_copy: Path, breakage: str, fragments: list) -> None:
    root = voc_copy
    if breakage == "missing_root":
        root = tmp_path / "absent"
    elif breakage == "missing_split":
        (root / "ImageSets/Segmentation/val.txt").unlink()
    elif breakage == "empty_split":
        (root / "ImageSets/Segmentation/train.txt").write_text("")
    elif breakage == "missing_mask":
        (root / f"SegmentationClass/{ID}.png").unlink()  # val images need masks
    elif breakage == "mask_size":
        path = root / f"SegmentationClass/{ID}.png"
        write_label_png(path, read_label_png(path)[:300])
    elif breakage == "truncated_image":
        path = root / f"JPEGImages/{ID}.jpg"
        path.write_bytes(path.read_bytes()[:4000])
    elif breakage == "unknown_class":  # a training image without masks takes its labels from XML
        (root / "JPEGImages/noseg.jpg").write_bytes((root / f"JPEGImages/{ID}.jpg").read_bytes())
        xml = (root / f"Annotations/{ID}.xml").read_text()
        (root / "Annotations/noseg.xml").write_text(xml.replace("<name>dog</name>", "<name>dragon</name>"))
        (root / "ImageSets/Segmentation/train.txt").write_text(f"{ID}\nnoseg\n")
    elif breakage == "class_without_instance":
        path = root / f"SegmentationObject/{ID}.png"
        objects = read_label_png(path)
        objects[objects == 2] = 0  # instance 2 is the chair
        write_label_png(path, objects)
    project = tmp_path / "project"
    project.mkdir()
    result = _prepare(project, root)
    _assert_clean_failure(result, *fragments)
    # Nothing half-written for DVC to cache: no output and no leftover temporary.
    assert not (project / "data/prepared").exists()
    assert not (project / "data/eval/val_gt.json").exists()
    leftovers = list((project / "data").rglob(".*.tmp")) if (project / "data").exists() else []
    assert leftovers == []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"supervision": "bbox"}, "supervision must be one of cls | point | full, got 'bbox'"),
        ({"synthesize": {"num_train": "many"}}, "synthesize.num_train must be int"),
        ({"synthesize": {"max_side": 10}}, "synthesize.max_side must be >= 48"),
    ],
)
def test_every_stage_validates_the_whole_params_file(tmp_path: Path, overrides: dict, fragment: str) -> None:
    write_params(tmp_path / "params.yaml", overrides)
    for stage in ("synthesize", "prepare"):
        result = run_stage(stage, tmp_path)
        _assert_clean_failure(result, fragment)
    assert not (tmp_path / "data").exists()


def test_image_that_is_not_an_image(tmp_path: Path, voc_copy: Path) -> None:
    (voc_copy / f"JPEGImages/{ID}.jpg").write_bytes(b"\x89PNG not really")
    project = tmp_path / "project"
    project.mkdir()
    _assert_clean_failure(_prepare(project, voc_copy), f"{ID}.jpg", "unreadable")
