"""Fingerprints of training runs: a resumable state checkpoint is only valid for the run it came from.

A run is what its trained weights depend on: the params that change them, the bytes of its
inputs and the bytes of the code it runs. :func:`stage_code_files` lists that code (a stage
script and every ``bestie`` module it imports, found by reading the sources, not by importing
them); ``tests/test_dvc_graph.py`` checks ``dvc.yaml`` against the same list, so the resume
fingerprint and the DVC graph agree on what a stage's code is.

The ``classifier``, ``train`` and ``maskrcnn`` stages save their state as
``<state dir>/<kind>-<fingerprint>.pt`` and find it again with :func:`find_run_state`;
:func:`bestie.training.load_train_state` resumes from what it found.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bestie.checkpoint import load_checkpoint

__all__ = ["PACKAGE_DIR", "stage_code_files", "run_fingerprint", "RunState", "find_run_state"]

PACKAGE_DIR = Path(__file__).resolve().parent  # the bestie package that is running


def _module_file(root: Path, module: str) -> Path | None:
    """The file Python runs for the dotted ``module`` under ``root``, None if there is none.

    A package (``a/b/__init__.py``) wins over a module of the same name (``a/b.py``), as in Python.
    """
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_name(f"{base.name}.py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str | None, package: str) -> Iterator[str]:
    """Dotted names under ``package`` that ``path`` may import, anywhere in the file.

    ``module`` is the dotted name of ``path`` itself (None for a script outside the package,
    whose relative imports cannot be resolved). Every prefix of a name is included, since
    importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first. For
    ``from m import x``, ``m.x`` is included too: ``x`` may be a submodule (names that are
    not modules are dropped when mapped to files).
    """
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                # The package a relative import starts from: the module's own package, then
                # one level up for every extra dot.
                parts = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 >= len(parts):
                    continue
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            names = [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == package:
                yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def stage_code_files(entry_script: str | os.PathLike, package_dir: str | os.PathLike = PACKAGE_DIR) -> list[Path]:
    """The code a stage runs: ``entry_script`` and every module of the package it imports, transitively.

    Imports are read from the sources with :mod:`ast` (nothing is imported or executed):
    ``import pkg.a.b``, ``from pkg.a import b`` (``b`` a submodule or a name),
    ``from pkg import a`` and, inside the package, relative imports. An import anywhere in a
    file counts, also inside a function. Importing a module also runs the ``__init__.py`` of
    every package above it, so those are included.

    Args:
        entry_script: the stage's script (e.g. ``stages/train.py``).
        package_dir: the package whose modules are followed; by default the ``bestie`` that
            is running (other imports, e.g. torch, are the environment's, not the stage's code).
    Returns:
        absolute paths, sorted: the script and the package's ``.py`` files.
    """
    package_dir = Path(package_dir).resolve()
    root, package = package_dir.parent, package_dir.name
    entry_script = Path(entry_script).resolve()
    files: set[Path] = set()
    seen: set[str] = set()
    pending = list(_imported_names(entry_script, None, package))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is not None:
            files.add(path)
            pending.extend(_imported_names(path, name, package))
    return sorted({entry_script, *files})


def run_fingerprint(
    config: Mapping[str, Any],
    inputs: Sequence[str | os.PathLike],
    code: Sequence[str | os.PathLike] = (),
    *,
    ignore: Collection[str] = (),
) -> str:
    """16 hex digits hashing ``config``, the bytes of ``inputs`` and the bytes of ``code``.

    Args:
        config: JSON-able params the trained weights depend on (key order does not matter).
        inputs: files or folders the run reads. Folders are walked recursively in sorted
            order, so the fingerprint does not depend on the file system's listing order;
            file names (relative to the folder's parent) count as well as contents. Their
            order counts.
        code: the source files the run executes, usually :func:`stage_code_files` of the
            stage script; hashed by file name and contents, not location, so a moved
            checkout still resumes.
        ignore: top-level keys of ``config`` left out: settings that do not change the
            weights (e.g. ``resume``, ``workers``, ``log_every``), so changing them still
            resumes.
    """
    kept = {key: value for key, value in config.items() if key not in ignore}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode())
    for root in [*map(Path, inputs), *map(Path, code)]:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RunState(NamedTuple):
    """Where a training run saves its resumable state, and the state to resume from."""

    path: Path  # <state dir>/<kind>-<fingerprint>.pt
    saved: dict[str, Any] | None  # the checkpoint there (``extra``: a TrainState); None: start afresh


def find_run_state(
    state_dir: str | os.PathLike,
    *,
    stage: str,
    kind: str,
    fingerprint: str,
    resume: bool,
    class_names: Sequence[str],
    is_main: bool = True,
) -> RunState:
    """Find the resumable state of this run under ``state_dir``, or decide to start afresh.

    With ``resume``, a state file of this ``kind`` made by another run (another fingerprint:
    other code, params or inputs) is removed, with one line saying so, since it can never be
    resumed; only files this project names ``<kind>-<16 hex digits>.pt`` are touched. The
    state of this very run is loaded and announced with ``resuming from iteration N``.

    Args:
        stage: the stage's name, for the message (e.g. ``train``).
        kind: the checkpoint kind (:data:`bestie.checkpoint.KINDS`), also the file name's prefix.
        fingerprint: :func:`run_fingerprint` of this run.
        resume: the stage's ``resume`` param; False always starts afresh.
        class_names: the dataset's classes; the saved state must have been trained on them.
        is_main: False on the other processes of a distributed run: they load the state
            but leave reporting and removing to the main process.
    Raises:
        BestieError: this run's state file is unreadable or of other classes.
    """
    state_dir = Path(state_dir)
    path = state_dir / f"{kind}-{fingerprint}.pt"
    if not resume:
        return RunState(path, None)
    if is_main:
        own_kind = re.compile(rf"{re.escape(kind)}-[0-9a-f]{{16}}\.pt")
        stale = [p for p in state_dir.glob(f"{kind}-*.pt") if p != path and own_kind.fullmatch(p.name)]
        if stale:
            print(f"{stage}: the saved state under {state_dir} was made by other code, params or inputs; "
                  "starting afresh")
            for old in stale:
                old.unlink(missing_ok=True)
    if not path.is_file():
        return RunState(path, None)
    saved = load_checkpoint(path, kind=kind, class_names=class_names)
    if is_main:
        print(f"resuming from iteration {saved['extra']['iteration']} ({path})")
    return RunState(path, saved)
