"""The DVC pipeline itself: a real `dvc repro` of the whole DAG on tiny params in a fresh clone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bestie.evaluation import voc_instance_map

from .helpers import clone_project, env_with_this_python, write_params

pytestmark = pytest.mark.slow

# Small enough to run the whole DAG in CI, big enough that every stage sees real data.
TINY = {
    "synthesize": {"num_train": 24, "num_val": 8},
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
    _dvc(project, "repro")
    return project


def test_repro_writes_every_contract_output(project: Path) -> None:
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


EDGES = {("synthesize", "prepare")}


def test_dag_chains_the_stages(project: Path) -> None:
    dot = _dvc(project, "dag", "--dot").stdout
    assert EDGES <= set(re.findall(r'"(\w+)" -> "(\w+)"', dot))


def test_metrics_show_is_a_clean_table(project: Path) -> None:
    shown = _dvc(project, "metrics", "show", "--json").stdout
    metrics = json.loads(shown)
    values = next(iter(metrics.values()))["data"]["metrics/dataset.json"]["data"]
    assert all(isinstance(v, (int, float)) for v in values.values())


def test_bad_param_stops_repro_at_the_first_stage(project: Path) -> None:
    params = (project / "params.yaml").read_text()
    try:
        write_params(project / "params.yaml", {**TINY, "supervision": "bbox"})
        result = subprocess.run(
            ["dvc", "repro", "--force"], cwd=project, env=env_with_this_python(), capture_output=True, text=True
        )
        assert result.returncode != 0
        assert "supervision must be one of cls | point | full, got 'bbox'" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr + result.stdout
    finally:
        (project / "params.yaml").write_text(params)
        _dvc(project, "checkout", "-f")
        _dvc(project, "repro")
