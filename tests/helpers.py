"""Running stage scripts and the DVC pipeline from tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bestie.presets import merge_params

REPO = Path(__file__).resolve().parents[1]


def env_with_this_python() -> dict[str, str]:
    """The environment with this interpreter's bin first, so `python` and `dvc` are ours."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run_stage(stage: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``stages/<stage>.py`` with ``cwd`` as the project directory."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{stage}.py"), *args],
        cwd=cwd, env=env_with_this_python(), capture_output=True, text=True, timeout=600,
    )


def write_params(path: Path, overrides: dict) -> None:
    """Write the repo's params.yaml with nested ``overrides`` merged in."""
    params = merge_params(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def clone_project(dest: Path) -> Path:
    """Copy the project's source files (tracked or not ignored by git) into a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest
