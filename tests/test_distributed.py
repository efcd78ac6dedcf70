"""Multi-process training and inference through torchrun: 2 CPU processes (gloo) stay in sync
in training, and give one process's outputs when they shard evaluate and export_coco."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bestie.checkpoint import save_checkpoint
from bestie.data.manifest import load_manifest
from bestie.distributed import DistContext, gather_shards, shard
from bestie.models import BestieNet

from .helpers import REPO, env_with_this_python, write_params


def test_two_cpu_processes_train_in_lockstep(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)],
        cwd=REPO, env=env_with_this_python(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # DDP averages the gradients, so both replicas hold the same weights after every step.
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    assert ranks[0]["steps"] == [1, 2, 3, 4]  # the main process logs
    assert ranks[1]["steps"] == []  # other processes do not


def test_shards_are_contiguous_balanced_and_cover_everything() -> None:
    cpu = torch.device("cpu")
    for count in range(8):
        parts = [list(shard(range(count), DistContext(rank, 3, cpu))) for rank in range(3)]
        assert [i for part in parts for i in part] == list(range(count))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert list(shard("abc", None)) == list("abc") and gather_shards(["a"], None) == ["a"]


def _torchrun(project: Path, script: str, *args: str, processes: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*(launcher if processes > 1 else [sys.executable]), str(REPO / "stages" / f"{script}.py"), *args],
        cwd=project, env={**env_with_this_python(), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthetic training and five validation images, and an untrained BESTIE network."""
    project = tmp_path_factory.mktemp("sharded")
    write_params(project / "params.yaml", {
        "synthesize": {"num_train": 5, "num_val": 5, "min_side": 48, "max_side": 64, "num_classes": 3,
                       "max_classes_per_image": 2},
        "inference": {"seg_refine": {"iterations": 2}, "min_size": 4},
        "evaluate": {"gallery": 3},
        "export_coco": {"threshold": "fixed", "score_thresh": 0.0, "label_filter": False},  # keep every instance
    })
    _torchrun(project, "synthesize", processes=1)
    _torchrun(project, "prepare", processes=1)
    class_names = load_manifest(project / "data/prepared/manifest.json").class_names
    torch.manual_seed(0)
    model = BestieNet(len(class_names), "small", pretrained=False)
    save_checkpoint(project / "data/models/bestie.pt", model.state_dict(), kind="bestie",
                    config={"backbone": "small"}, class_names=class_names)
    return project


def test_two_processes_evaluate_as_one(small_project: Path) -> None:
    outputs = {}
    for processes in (1, 2):
        out = f"runs/{processes}"
        _torchrun(small_project, "evaluate", "--out", f"{out}/eval", "--metrics", f"{out}/metrics.json",
                  "--gallery", f"{out}/gallery", processes=processes)
        outputs[processes] = {
            path.relative_to(small_project / out): path.read_bytes()
            for path in sorted((small_project / out).rglob("*")) if path.is_file()
        }
    assert outputs[2] == outputs[1]  # predictions, settings, metrics, gallery: byte for byte
    names = {path.as_posix() for path in outputs[1]}
    assert len([name for name in names if name.startswith("gallery/")]) == 3
    assert json.loads(outputs[1][Path("eval/predictions.json")])  # not trivially equal: instances found


def test_two_processes_export_coco_as_one(small_project: Path) -> None:
    exported = {}
    for processes in (1, 2):
        out = small_project / f"runs/{processes}"
        _torchrun(small_project, "export_coco", "--out", str(out / "pseudo.json"), "--metrics",
                  str(out / "export.json"), processes=processes)
        exported[processes] = ((out / "pseudo.json").read_bytes(), (out / "export.json").read_bytes())
    assert exported[2] == exported[1]
    coco = json.loads(exported[1][0])
    assert len(coco["images"]) == 5 and coco["annotations"]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
