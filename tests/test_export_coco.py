"""The `export_coco` and `maskrcnn` stage entry points on the real VOC image, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO

from bestie.checkpoint import save_checkpoint
from bestie.data.sources.voc import VOC_CLASSES
from bestie.models import BestieNet

from .helpers import run_stage, write_params

ID = "2007_000063"
METRIC_KEYS = {"voc_map25", "voc_map50", "voc_map70", "voc_map75", "coco_ap", "coco_ap50", "coco_ap75"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, voc_fixture_root: Path):
    """A project prepared once on the VOC fixture, with tiny Mask R-CNN settings."""
    root = tmp_path_factory.mktemp("project")
    write_params(root / "params.yaml", {
        "data": {"root": str(voc_fixture_root)},
        "evaluate": {"gallery": 1},
        "export_coco": {"threshold": "fixed", "score_thresh": 0.0, "label_filter": False},  # keep every instance
        "maskrcnn": {"min_size": [48], "max_size": 64, "iterations": 2, "batch_size": 1,
                     "warmup_iters": 1, "checkpoint_every": 1, "log_every": 1},
    })
    with pytest.MonkeyPatch.context() as patch:
        # One image: intra-op threads only add overhead, and thrash when other jobs share the CPUs.
        patch.setenv("OMP_NUM_THREADS", "1")
        result = run_stage("prepare", root)
        assert result.returncode == 0, result.stderr
        yield root


def test_export_coco_writes_a_loadable_pseudo_label_file(project: Path) -> None:
    torch.manual_seed(0)
    model = BestieNet(len(VOC_CLASSES), "small", pretrained=False)  # untrained: any instances will do
    save_checkpoint(project / "data/models/bestie.pt", model.state_dict(), kind="bestie",
                    config={"backbone": "small"}, class_names=VOC_CLASSES)
    result = run_stage("export_coco", project)
    assert result.returncode == 0, result.stderr

    path = project / "data/coco/train_pseudo.json"
    coco = json.loads(path.read_text())
    assert coco["images"] == [{"id": 1, "file_name": f"{ID}.jpg", "width": 500, "height": 375}]
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    for annotation in coco["annotations"]:
        assert set(annotation) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score"}
        assert isinstance(annotation["segmentation"]["counts"], str)
        assert annotation["segmentation"]["size"] == [375, 500] and annotation["iscrowd"] == 0
    assert len(COCO(str(path)).getAnnIds()) == len(coco["annotations"])
    metrics = json.loads((project / "metrics/export_coco.json").read_text())
    assert metrics["images"] == 1 and metrics["instances"] == len(coco["annotations"])
    assert {f"train_{k}" for k in METRIC_KEYS} <= set(metrics)
    assert metrics["score_thresh"] == 0.0 and 0 <= metrics["label_presence_f1"] <= 100


def test_export_coco_calibrated_on_the_labels_keeps_labelled_classes_only(project: Path) -> None:
    torch.manual_seed(1)
    model = BestieNet(len(VOC_CLASSES), "small", pretrained=False)
    save_checkpoint(project / "data/models/bestie.pt", model.state_dict(), kind="bestie",
                    config={"backbone": "small"}, class_names=VOC_CLASSES)
    params = (project / "params.yaml").read_text()
    try:
        write_params(project / "params.yaml", {
            **yaml.safe_load(params), "export_coco": {"threshold": "labels", "label_filter": True},
        })
        result = run_stage("export_coco", project, "--out", "data/coco/labelled.json", "--metrics", "metrics/labelled.json")
    finally:
        (project / "params.yaml").write_text(params)
    assert result.returncode == 0, result.stderr

    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    (record,) = manifest["train"]
    labelled = {manifest["category_ids"][c] for c in record["labels"]}
    annotations = json.loads((project / "data/coco/labelled.json").read_text())["annotations"]
    metrics = json.loads((project / "metrics/labelled.json").read_text())
    assert annotations and {a["category_id"] for a in annotations} <= labelled
    assert all(a["score"] >= metrics["score_thresh"] for a in annotations)


def test_export_coco_without_a_trained_model_is_one_clear_line(project: Path) -> None:
    result = run_stage("export_coco", project, "--model", "data/models/absent.pt", "--out", "data/coco/absent.json")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: data/models/absent.pt: checkpoint not found"
    assert not (project / "data/coco/absent.json").exists()


def test_maskrcnn_trains_evaluates_and_cleans_up(project: Path) -> None:
    # The training split's ground truth stands in for pseudo labels: same format.
    result = run_stage("maskrcnn", project, "--annotations", "data/prepared/train_gt.json")
    assert result.returncode == 0, result.stderr

    checkpoint = torch.load(project / "data/models/maskrcnn.pt", weights_only=True)
    assert checkpoint["kind"] == "maskrcnn" and checkpoint["class_names"] == list(VOC_CLASSES)
    assert checkpoint["config"]["backbone"] == "small_fpn"
    assert set(json.loads((project / "metrics/maskrcnn.json").read_text())) == METRIC_KEYS | {"environment"}
    assert isinstance(json.loads((project / "data/eval/maskrcnn/predictions.json").read_text()), list)
    assert (project / f"metrics/gallery/maskrcnn/{ID}.png").is_file()
    log = (project / "metrics/maskrcnn/log.tsv").read_text().splitlines()
    assert log[0].split("\t")[:3] == ["step", "loss", "classifier"] and [r.split("\t")[0] for r in log[1:]] == ["1", "2"]
    assert list((project / "data/train_state").iterdir()) == []  # the finished run's state is gone
