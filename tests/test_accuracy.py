"""An accuracy floor: a short `full`-supervision run on small embedded data must learn.

The other pipeline tests check that every stage runs and writes what it should; this one
checks that the result is a working model, so a broken loss, target renderer, grouping or
post-processing fails CI. The floor lies far below what the run measures (see FLOOR) and
far above what a model that learns nothing scores (0).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .helpers import clone_project, env_with_this_python, write_params

pytestmark = pytest.mark.slow

SMOKE = {
    "supervision": "full",
    "synthesize": {"num_train": 80, "num_val": 24},
    "classifier": {"epochs": 1, "lr_steps": [], "batch_size": 16},
    "train": {"iterations": 300, "batch_size": 4, "warmup_iters": 20, "workers": 0, "log_every": 50},
    "evaluate": {"gallery": 0},
}
# voc_map50 in percent. A model that learns nothing scores 0; what this run measures (README,
# Tests) varies from machine to machine: the floor leaves room for them.
FLOOR = 5.0


def test_a_short_full_supervision_run_clears_the_floor(tmp_path: Path) -> None:
    project = clone_project(tmp_path)
    write_params(project / "params.yaml", SMOKE)
    result = subprocess.run(
        ["dvc", "repro", "evaluate"], cwd=project, env=env_with_this_python(),
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((project / "metrics/bestie.json").read_text())
    print(f"voc_map50 {metrics['voc_map50']:.1f} (floor {FLOOR})")
    assert metrics["voc_map50"] >= FLOOR
