"""Atomic writes: never a half-written output, never a deleted file the writer did not make,
and the permissions of the user's umask."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch

from bestie.checkpoint import save_checkpoint
from bestie.errors import BestieError
from bestie.io import atomic_dir, atomic_file, write_json

MARKER = ".made-by-test"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` with its bytes (None for folders): to prove nothing changed."""
    return {
        p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def _write_result(path: Path, **files: str) -> None:
    with atomic_dir(path, marker=MARKER) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def test_a_new_folder_appears_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    _write_result(tmp_path / "out", a="1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "a"]


def test_an_empty_folder_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "out/a").read_text() == "1"


def test_an_earlier_result_is_replaced_whole(tmp_path: Path) -> None:
    _write_result(tmp_path / "out", a="1", b="2")
    _write_result(tmp_path / "out", c="3")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone, no temporary


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("file", "exists and is not a folder"),
        ("link", "exists and is not a folder"),
        ("foreign_folder", "folder is not empty and holds no earlier result (no .made-by-test file)"),
        ("result_plus_a_file", "holds notes.txt, which the earlier result there did not"),
        ("result_plus_a_folder", "holds extra, which the earlier result there did not"),
        ("garbled_marker", "holds a, which the earlier result there did not"),
    ],
)
def test_anything_else_is_refused_on_entry_and_left_alone(tmp_path: Path, setup: str, message: str) -> None:
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("precious")
    elif setup == "link":
        (tmp_path / "target").mkdir()
        out.symlink_to(tmp_path / "target")
    elif setup == "foreign_folder":
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
    else:
        _write_result(out, a="1")
        if setup == "result_plus_a_file":
            (out / "notes.txt").write_text("precious")
        elif setup == "result_plus_a_folder":
            (out / "extra").mkdir()
        else:
            (out / MARKER).write_text("[not the list]")
    before = _snapshot(tmp_path)
    with pytest.raises(BestieError, match=re.escape(message)) as refused:
        with atomic_dir(out, marker=MARKER):
            pytest.fail("the body must not run")
    assert "\n" not in str(refused.value)
    assert _snapshot(tmp_path) == before


def test_without_a_marker_only_nothing_or_an_empty_folder_is_replaced(tmp_path: Path) -> None:
    _write_result(tmp_path / "out", a="1")
    with pytest.raises(BestieError, match="folder is not empty; refusing to replace it"):
        with atomic_dir(tmp_path / "out"):
            pass


def test_the_current_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"precious")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BestieError, match=r"^\.: folder is not empty"):
        with atomic_dir(".", marker=MARKER):
            pass
    assert _snapshot(tmp_path) == {"photo.jpg": b"precious"}


def test_files_added_while_working_stop_the_swap(tmp_path: Path) -> None:
    """The check is repeated just before the swap: the folder may have changed meanwhile."""
    out = tmp_path / "out"
    _write_result(out, a="1")
    with pytest.raises(BestieError, match="holds late.txt"):
        with atomic_dir(out, marker=MARKER) as tmp:
            (tmp / "b").write_text("2")
            (out / "late.txt").write_text("precious")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a", "late.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_true_replaces_whatever_is_there(tmp_path: Path) -> None:
    """A DVC stage's own output: a folder or a file of that name."""
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    (folder / "old").write_text("0")
    file.write_text("0")
    for path in (folder, file):
        with atomic_dir(path, replace=True) as tmp:
            (tmp / "new").write_text("1")
        assert [p.name for p in path.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    with pytest.raises(ValueError, match="not both"):
        with atomic_dir(folder, replace=True, marker=MARKER):
            pass


def test_a_failure_leaves_the_earlier_result_and_no_temporary(tmp_path: Path) -> None:
    _write_result(tmp_path / "out", a="1")
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out", marker=MARKER) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert _snapshot(tmp_path) == before


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> int:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_take_the_users_umask(tmp_path: Path, umask: int) -> None:
    """Not tempfile's private 0o700 / 0o600: results are the user's, to share as any file."""
    with atomic_dir(tmp_path / "dir", marker=MARKER) as tmp:
        (tmp / "inner").mkdir()
    with atomic_file(tmp_path / "file.txt") as handle:
        handle.write("x")
    write_json(tmp_path / "file.json", {"a": 1})
    save_checkpoint(tmp_path / "model.pt", torch.nn.Linear(1, 1).state_dict(), kind="pam", config={},
                    class_names=["a"])
    for folder in ("dir", "dir/inner"):
        assert _mode(tmp_path / folder) == 0o777 & ~umask, folder
    for file in (f"dir/{MARKER}", "file.txt", "file.json", "model.pt"):
        assert _mode(tmp_path / file) == 0o666 & ~umask, file
    assert os.umask(umask) == umask  # the umask is left as it was
