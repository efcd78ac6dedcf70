"""A resumable state is keyed by the run: same config, inputs and code, same fingerprint; any change, another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bestie.checkpoint import save_checkpoint
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("disc", "box")


@pytest.fixture
def run_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder of labels, an annotation file and a code file."""
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"aa")
    (folder / "b.png").write_bytes(b"bb")
    annotations = tmp_path / "train.json"
    annotations.write_text("{}")
    code = tmp_path / "training.py"
    code.write_text("ITERATIONS = 1\n")
    return folder, annotations, code


def test_fingerprint_follows_config_and_input_bytes(run_files):
    folder, annotations, _ = run_files
    base = run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations])
    assert len(base) == 16 and int(base, 16) >= 0
    assert run_fingerprint({"sizes": [1, 2], "lr": 0.1}, [folder, annotations]) == base  # key order is irrelevant
    assert run_fingerprint({"lr": 0.2, "sizes": [1, 2]}, [folder, annotations]) != base
    assert run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [annotations, folder]) != base  # inputs are ordered

    annotations.write_text("{ }")
    changed_file = run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations])
    assert changed_file != base
    (folder / "b.png").rename(folder / "c.png")  # same bytes under another name
    assert run_fingerprint({"lr": 0.1, "sizes": [1, 2]}, [folder, annotations]) != changed_file


def test_fingerprint_follows_code_bytes(run_files):
    folder, annotations, code = run_files
    base = run_fingerprint({"lr": 0.1}, [folder, annotations], [code])
    assert run_fingerprint({"lr": 0.1}, [folder, annotations], [code]) == base
    code.write_text("ITERATIONS = 2\n")
    assert run_fingerprint({"lr": 0.1}, [folder, annotations], [code]) != base


def test_ignored_keys_do_not_change_the_fingerprint(run_files):
    folder, annotations, code = run_files
    ignore = ("resume", "workers")
    base = run_fingerprint({"lr": 0.1, "resume": True, "workers": 2}, [folder], [code], ignore=ignore)
    assert run_fingerprint({"lr": 0.1, "resume": False, "workers": 0}, [folder], [code], ignore=ignore) == base
    assert run_fingerprint({"lr": 0.1}, [folder], [code], ignore=ignore) == base
    assert run_fingerprint({"lr": 0.3, "resume": True, "workers": 2}, [folder], [code], ignore=ignore) != base
    assert run_fingerprint({"lr": 0.1, "resume": False, "workers": 0}, [folder], [code]) != base


def test_stage_code_files_follow_imports_transitively():
    files = {path.relative_to(REPO).as_posix() for path in stage_code_files(REPO / "stages/train.py")}
    assert {"stages/train.py", "bestie/training.py", "bestie/refine.py"} <= files  # refine: through losses
    # A module implies the __init__.py of every package above it.
    assert {"bestie/__init__.py", "bestie/data/__init__.py", "bestie/models/__init__.py"} <= files
    assert "bestie/cli.py" not in files
    assert all(path.endswith(".py") for path in files)


def test_stage_code_files_resolve_relative_imports(tmp_path: Path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("from ..util import helper\n")
    (package / "util.py").write_text("def helper():\n    from .lazy import value\n")
    (package / "lazy.py").write_text("value = 1\n")
    (package / "unused.py").write_text("")
    script = tmp_path / "run.py"
    script.write_text("import os\nfrom pkg.sub import leaf\n")
    files = {path.relative_to(tmp_path).as_posix() for path in stage_code_files(script, package)}
    assert files == {
        "run.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py", "pkg/util.py", "pkg/lazy.py",
    }


def _save_state(path: Path, iteration: int) -> None:
    save_checkpoint(
        path, torch.nn.Linear(2, 2).state_dict(), kind="bestie", config={}, class_names=CLASSES,
        extra={"iteration": iteration},
    )


def test_stale_state_is_removed_with_one_line(tmp_path: Path, capsys):
    stale = tmp_path / "bestie-0123456789abcdef.pt"
    _save_state(stale, 7)
    other_kind = tmp_path / "maskrcnn-0123456789abcdef.pt"
    other_kind.write_bytes(b"another stage's state")
    not_a_state = tmp_path / "bestie-notes.pt"  # not a name this project writes
    not_a_state.write_bytes(b"someone else's file")
    state = find_run_state(
        tmp_path, stage="train", kind="bestie", fingerprint="fedcba9876543210", resume=True, class_names=CLASSES,
    )
    assert state.path == tmp_path / "bestie-fedcba9876543210.pt" and state.saved is None
    assert capsys.readouterr().out == (
        f"train: the saved state under {tmp_path} was made by other code, params or inputs; starting afresh\n"
    )
    assert not stale.exists() and other_kind.exists() and not_a_state.exists()


def test_same_fingerprint_resumes(tmp_path: Path, capsys):
    path = tmp_path / "bestie-fedcba9876543210.pt"
    _save_state(path, 7)
    state = find_run_state(
        tmp_path, stage="train", kind="bestie", fingerprint="fedcba9876543210", resume=True, class_names=CLASSES,
    )
    assert state.path == path and state.saved["extra"]["iteration"] == 7
    assert capsys.readouterr().out == f"resuming from iteration 7 ({path})\n"


def test_without_resume_the_state_is_not_read(tmp_path: Path, capsys):
    path = tmp_path / "bestie-fedcba9876543210.pt"
    _save_state(path, 7)
    state = find_run_state(
        tmp_path, stage="train", kind="bestie", fingerprint="fedcba9876543210", resume=False, class_names=CLASSES,
    )
    assert state == (path, None)
    assert capsys.readouterr().out == ""


def test_no_state_dir_starts_afresh_quietly(tmp_path: Path, capsys):
    state = find_run_state(
        tmp_path / "train_state", stage="maskrcnn", kind="maskrcnn", fingerprint="fedcba9876543210",
        resume=True, class_names=CLASSES,
    )
    assert state.saved is None and capsys.readouterr().out == ""
