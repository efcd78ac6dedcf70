"""The DVC pipeline itself: a real `dvc repro` of the whole DAG on tiny params in a fresh clone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bestie.checkpoint import load_checkpoint
from bestie.metrics.instances import voc_instance_map
from bestie.io import environment_versions
from bestie.presets import merge_params

from .helpers import clone_project, env_with_this_python, write_params

pytestmark = pytest.mark.slow

# Small enough to run the whole DAG in CI, big enough that every stage sees real data.
TINY = {
    "synthesize": {"num_train": 24, "num_val": 8},
    "classifier": {"epochs": 1, "lr_steps": [], "batch_size": 8},
    "train": {"iterations": 3, "batch_size": 4, "warmup_iters": 1, "workers": 0, "log_every": 1},
    "export_coco": {"threshold": "fixed", "score_thresh": 0.0, "label_filter": False},  # keep every instance
    "maskrcnn": {"iterations": 2, "batch_size": 2, "log_every": 1},
    "evaluate": {"gallery": 2},
}


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["dvc", *args], cwd=project, env=env_with_this_python(),
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = clone_project(tmp_path_factory.mktemp("pipeline"))
    write_params(project / "params.yaml", TINY)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "commit", "-qam", "tiny params"], cwd=project, check=True)  # what --temp runs copy
    _dvc(project, "repro")
    return project


@pytest.fixture(scope="module")
def coco_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny pipeline on the synthetic data in the COCO 2017 layout, read as COCO."""
    project = clone_project(tmp_path_factory.mktemp("pipeline_coco"))
    write_params(project / "params.yaml", {**TINY, "synthesize": {**TINY["synthesize"], "coco": True},
                                           "data": {"format": "coco"}})
    _dvc(project, "repro")
    return project


def test_coco_input_runs_the_whole_dag_and_keeps_the_datasets_ids(coco_project: Path) -> None:
    original = json.loads((coco_project / "data/synthetic/annotations/instances_val2017.json").read_text())
    category_ids = {c["id"] for c in original["categories"]}
    assert category_ids != set(range(1, len(category_ids) + 1))  # the ids to keep are not class + 1
    image_ids = {i["id"] for i in original["images"]}
    for name in ("bestie", "maskrcnn"):
        metrics = json.loads((coco_project / f"metrics/{name}.json").read_text())
        assert {"voc_map50", "coco_ap"} <= set(metrics)
        predictions = json.loads((coco_project / f"data/eval/{name}/predictions.json").read_text())
        assert {p["image_id"] for p in predictions} <= image_ids
        assert {p["category_id"] for p in predictions} <= category_ids
    pseudo = json.loads((coco_project / "data/coco/train_pseudo.json").read_text())
    assert {c["id"] for c in pseudo["categories"]} == category_ids
    manifest = json.loads((coco_project / "data/prepared/manifest.json").read_text())
    assert all("/train2017/" in record["path"] for record in manifest["train"])


def test_repro_writes_every_contract_output(project: Path) -> None:
    for name in ("bestie", "maskrcnn"):
        metrics = json.loads((project / f"metrics/{name}.json").read_text())
        assert set(metrics) >= {"voc_map25", "voc_map50", "voc_map70", "voc_map75", "coco_ap", "coco_ap50", "coco_ap75"}
        predictions = json.loads((project / f"data/eval/{name}/predictions.json").read_text())
        assert isinstance(predictions, list)
    for kind in ("pam", "bestie", "maskrcnn"):
        assert load_checkpoint(project / f"data/models/{kind}.pt", kind=kind)["class_names"]
    assert json.loads((project / "data/coco/train_pseudo.json").read_text())["categories"]
    stats = json.loads((project / "metrics/dataset.json").read_text())
    assert stats["images"] == 32
    gt = json.loads((project / "data/eval/val_gt.json").read_text())
    assert len(gt["images"]) == 8 and gt["annotations"]
    assert {"JPEGImages", "SegmentationClass", "SegmentationObject"} <= {
        p.name for p in (project / "data/synthetic").iterdir()
    }
    assert voc_instance_map(gt, [dict(a, score=1.0) for a in gt["annotations"]])["voc_map50"] == 100.0


def test_second_repro_changes_nothing(project: Path) -> None:
    result = _dvc(project, "repro")
    assert "Data and pipelines are up to date" in result.stdout


def test_inference_settings_rerun_only_the_stages_that_predict(project: Path) -> None:
    params = (project / "params.yaml").read_text()
    try:
        write_params(project / "params.yaml", {**TINY, "inference": {"seg_refine": {"iterations": 3}}})
        changed = json.loads(_dvc(project, "status", "--json").stdout)
        # check_params validates every edit of params.yaml (its output is a fixed line, so it
        # changes nothing below it); maskrcnn follows export_coco's output.
        assert set(changed) == {"check_params", "evaluate", "export_coco"}
        # e.g. {"evaluate": [{"changed deps": {"params.yaml": {"inference": "modified"}}}]}
        for stage in ("evaluate", "export_coco"):
            assert changed[stage] == [{"changed deps": {"params.yaml": {"inference": "modified"}}}], changed
        assert changed["check_params"] == [{"changed deps": {"params.yaml": "modified"}}], changed
    finally:
        (project / "params.yaml").write_text(params)


def test_predict_on_val_images_equals_the_evaluate_stage(project: Path) -> None:
    """`bestie predict` in the project uses the evaluate stage's recorded settings: same predictions."""
    gt = json.loads((project / "data/eval/val_gt.json").read_text())
    image_id = {image["file_name"]: image["id"] for image in gt["images"]}
    files = [str(project / "data/synthetic/JPEGImages" / name) for name in image_id]
    result = subprocess.run(
        [sys.executable, "-m", "bestie.cli", "predict", *files, "--checkpoint", "data/models/bestie.pt",
         "--out", "predicted"],
        cwd=project, env=env_with_this_python(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "inference settings: data/eval/bestie/inference.json (the evaluate stage's)" in result.stdout
    names = {i["id"]: Path(i["file_name"]).name for i in json.loads((project / "predicted/images.json").read_text())["images"]}
    predicted = [dict(r, image_id=image_id[names[r["image_id"]]])
                 for r in json.loads((project / "predicted/predictions.json").read_text())]
    evaluated = json.loads((project / "data/eval/bestie/predictions.json").read_text())
    assert evaluated, "the tiny model predicts nothing: this comparison would be empty"
    key = lambda r: (r["image_id"], -r["score"], r["segmentation"]["counts"])  # noqa: E731
    assert sorted(predicted, key=key) == sorted(evaluated, key=key)


EDGES = {
    ("check_params", "synthesize"), ("check_params", "prepare"), ("synthesize", "prepare"), ("prepare", "classifier"), ("classifier", "peaks"), ("classifier", "wsss"),
    ("peaks", "pseudo_labels"), ("wsss", "wsss_network"), ("wsss_network", "pseudo_labels"),
    ("wsss_network", "train"), ("pseudo_labels", "train"), ("train", "evaluate"),
    ("train", "export_coco"), ("export_coco", "maskrcnn"),
}


def test_dag_chains_the_stages(project: Path) -> None:
    dot = _dvc(project, "dag", "--dot").stdout
    assert EDGES <= set(re.findall(r'"(\w+)" -> "(\w+)"', dot))


def test_metrics_show_is_a_clean_table(project: Path) -> None:
    shown = _dvc(project, "metrics", "show", "--json").stdout
    files = next(iter(json.loads(shown).values()))["data"]
    assert {"metrics/dataset.json", "metrics/bestie.json", "metrics/maskrcnn.json"} <= set(files)
    versions = environment_versions()
    for name, content in files.items():  # numbers, and the versions that produced them
        data = content["data"]
        assert data.pop("environment") == versions, name
        assert all(isinstance(v, (int, float)) for v in data.values()), name


def test_plots_show_renders_curves_and_galleries(project: Path) -> None:
    _dvc(project, "plots", "show", "--out", "plots")
    assert (project / "plots/index.html").is_file()


@pytest.mark.parametrize("supervision", ["point", "full"])
def test_other_supervisions_run_as_experiments(project: Path, supervision: str) -> None:
    result = _dvc(project, "exp", "run", "--temp", "-S", f"supervision={supervision}")
    assert "Ran experiment" in result.stdout + result.stderr
    shown = json.loads(_dvc(project, "exp", "show", "--json").stdout)
    assert shown  # the experiment is recorded with its metrics


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"supervision": "bbox"}, "supervision must be one of cls | point | full, got 'bbox'"),
        ({"trian": {"iterations": 5}}, "unknown key trian"),
        ({"inference": {"nms_kernel": 40}}, "inference.nms_kernel must be odd, got 40"),
    ],
)
def test_a_refused_param_costs_no_result(project: Path, bad: dict, message: str) -> None:
    """check_params refuses the value before DVC removes any stage's outputs; back to the good
    value, nothing re-runs."""
    params = (project / "params.yaml").read_text()
    kept = ["metrics/bestie.json", "metrics/train/log.tsv", "metrics/maskrcnn.json", "data/models/bestie.pt",
            "data/eval/bestie/predictions.json"]
    before = {name: (project / name).read_bytes() for name in kept}
    try:
        write_params(project / "params.yaml", {**TINY, **bad})
        result = subprocess.run(
            ["dvc", "repro"], cwd=project, env=env_with_this_python(), capture_output=True, text=True
        )
        assert result.returncode != 0
        assert message in result.stderr + result.stdout
        assert "Traceback" not in result.stderr + result.stdout
        assert {name: (project / name).read_bytes() for name in kept} == before
    finally:
        (project / "params.yaml").write_text(params)
    # The refused run removed only check_params' own output, restored from the cache now.
    rerun = _dvc(project, "repro").stdout
    assert "Running stage" not in rerun, rerun
    assert "Stage 'train' didn't change, skipping" in rerun


def _output_hashes(project: Path, stage: str) -> dict[str, str]:
    """md5 of a stage's outputs in dvc.lock, but the training log (it holds wall times)."""
    outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["outs"]
    return {out["path"]: out["md5"] for out in outs if not out["path"].endswith("log.tsv")}


def test_a_forced_rerun_reproduces_the_results_bit_for_bit(project: Path) -> None:
    """Same code, params, data and locked environment: the same weights, predictions and metrics."""
    before = {stage: _output_hashes(project, stage) for stage in ("train", "evaluate")}
    metrics = (project / "metrics/bestie.json").read_text()
    _dvc(project, "repro", "--force", "--single-item", "train", "evaluate")
    assert {stage: _output_hashes(project, stage) for stage in ("train", "evaluate")} == before
    assert (project / "metrics/bestie.json").read_text() == metrics


def test_killed_training_resumes_and_leaves_nothing_corrupt(project: Path) -> None:
    """Kill `dvc repro` mid-training: no output is cached, and the next run resumes."""
    params = (project / "params.yaml").read_text()
    state_dir = project / "data/train_state"
    try:
        write_params(project / "params.yaml", {**TINY, "train": {**TINY["train"], "iterations": 40, "checkpoint_every": 2}})
        run = subprocess.Popen(
            ["dvc", "repro", "--single-item", "train"], cwd=project, env=env_with_this_python(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while not list(state_dir.glob("*.pt")) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert run.poll() is None, "training finished before it could be interrupted"
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert not (project / "data/models/bestie.pt").exists()  # nothing half-written to cache

        resumed = _dvc(project, "repro", "--single-item", "train")
        assert "resuming from iteration" in resumed.stdout + resumed.stderr
        checkpoint = load_checkpoint(project / "data/models/bestie.pt", kind="bestie")
        assert checkpoint["config"]["iterations"] == 40
        assert not list(state_dir.glob("*.pt"))  # the finished run cleans up its state
    finally:
        (project / "params.yaml").write_text(params)
        _dvc(project, "repro")


def test_repro_train_with_timms_hrnet(tmp_path: Path) -> None:
    """The train stage on timm's HRNet-W32 (no ImageNet weights): `dvc repro train` on tiny params."""
    project = clone_project(tmp_path)
    write_params(project / "params.yaml", merge_params(TINY, {"train": {"backbone": "hrnet_w32", "crop_size": 64}}))
    _dvc(project, "repro", "train")
    checkpoint = load_checkpoint(project / "data/models/bestie.pt", kind="bestie")
    assert checkpoint["config"]["backbone"] == "hrnet_w32"
    assert any(name.startswith("backbone.body.stage4.") for name in checkpoint["model"])
    log = (project / "metrics/train/log.tsv").read_text().splitlines()
    assert len(log) == 1 + TINY["train"]["iterations"]  # a header, then one row an iteration (log_every 1)
