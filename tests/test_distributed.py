"""Multi-process training through torchrun: 2 CPU processes (gloo) stay in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from .helpers import REPO, env_with_this_python


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
