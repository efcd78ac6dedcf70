"""Reading images; atomic file and directory writes; metrics files.

DVC caches whatever a stage leaves behind, so a stage must never leave a half-written
output. Everything is written next to its destination under a temporary name and renamed
into place only once complete (rename is atomic within one file system).

Temporaries are created as ``open``/``mkdir`` create anything (``0o666``/``0o777`` less the
umask, applied by the kernel), not with ``tempfile``'s private ``0o600``/``0o700``: they
become the user's results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bestie.errors import BestieError

__all__ = [
    "read_image", "atomic_dir", "atomic_file", "write_json", "read_json", "write_tsv",
    "write_metrics", "environment_versions", "file_sha256",
]

# The packages whose versions decide the numbers: recorded with every metrics file.
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """[H, W, 3] uint8 RGB: the one image reader of the project (stages and ``bestie predict``).

    Raises:
        BestieError: missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BestieError(f"{path}: unreadable or truncated image ({err})") from None


def _temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (64 random bits: no two writers ever draw the same)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on clean exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _entries(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as paths relative to it (``/``-separated)."""
    found = set()
    for parent, folders, files in os.walk(folder):
        relative = Path(parent).relative_to(folder)
        found.update((relative / name).as_posix() for name in (*folders, *files))
    return found


def _check_replaceable(path: Path, marker: str | None) -> None:
    """Raise :class:`BestieError` unless ``path`` holds nothing its writer did not make.

    Replaceable: nothing at ``path``; an empty folder; with ``marker``, a folder holding
    that marker file and only the entries the marker lists (an earlier result of the same
    writer that nobody has added to).
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise BestieError(f"{path}: exists and is not a folder; refusing to replace it")
    if next(path.iterdir(), None) is None:
        return
    if marker is None or not (path / marker).is_file():
        earlier = f" and holds no earlier result (no {marker} file)" if marker else ""
        raise BestieError(f"{path}: folder is not empty{earlier}; refusing to replace it")
    try:
        listed = set(read_json(path / marker)["files"])
    except (BestieError, KeyError, TypeError):  # an unreadable list vouches for nothing
        listed = set()
    unknown = sorted(_entries(path) - listed - {marker})
    if unknown:
        raise BestieError(
            f"{path}: holds {unknown[0]}, which the earlier result there did not; refusing to replace it"
        )


def _rename_into_place(tmp: Path, path: Path) -> Path | None:
    """Rename ``tmp`` to ``path``, which need not be free.

    What is at ``path`` is first renamed aside (a folder cannot be renamed over a non-empty
    one) and put back if the second rename fails; so a crash at any moment leaves both the
    old and the new content on disk. Returns the aside name, for the caller to delete.
    """
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return None
    aside = tmp.with_suffix(".old")
    os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)
        raise
    return aside


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, replace: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it takes ``path``'s place on clean exit.

    What may already be at ``path`` is decided up front, so that nothing a user keeps
    there is ever deleted: nothing or an empty folder is always replaced; anything else
    only when the caller says so:

    - ``replace=True``: whatever is there. For a DVC stage, whose target is its own output
      (DVC deletes it before running the stage anyway).
    - ``marker=NAME``: a folder that an earlier ``atomic_dir(..., marker=NAME)`` wrote and
      nobody has added to since. The marker file is written into the new folder and lists
      its entries (``bestie predict --out``, which must not delete a user's folder).

    Anything else raises :class:`BestieError` on entry, before the caller does any work, and
    the check is repeated just before the swap (the folder may have changed meanwhile). On
    any exception the temporary folder is removed and ``path`` is left as it was.
    """
    if replace and marker:
        raise ValueError("atomic_dir: give replace=True or a marker, not both")
    if not replace:
        _check_replaceable(Path(path), marker)
    target = Path(os.path.abspath(path))  # "." has no name to put a sibling beside
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(target)
    tmp.mkdir(0o777)
    try:
        yield tmp
        if marker:
            write_json(tmp / marker, {
                "about": "bestie wrote this folder; its next run writing here replaces it whole, "
                         "provided it holds only these files",
                "files": sorted(_entries(tmp)),
            })
        if not replace:
            _check_replaceable(Path(path), marker)
        replaced = _rename_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replaced is not None:
        if replaced.is_dir() and not replaced.is_symlink():
            shutil.rmtree(replaced)
        else:
            replaced.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically (``indent=None`` for compact files)."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=indent)
        handle.write("\n")


def environment_versions() -> dict[str, str]:
    """Installed versions of :data:`NUMERIC_PACKAGES` (``requirements.lock`` pins them)."""
    return {name: version(name) for name in NUMERIC_PACKAGES}


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    """Write a stage's metrics file, with the package versions that produced it.

    The versions sit under ``environment`` (``dvc metrics show`` lists them as
    ``environment.torch``, ...), so a number can always be traced to its environment.
    """
    write_json(path, {**metrics, "environment": environment_versions()})


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: file not found")
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise BestieError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def write_tsv(path: str | os.PathLike, columns: tuple[str, ...], rows: list[dict]) -> None:
    """Write ``rows`` as a tab-separated table (a DVC plots file), atomically."""
    with atomic_file(path) as handle:
        handle.write("\t".join(columns) + "\n")
        for row in rows:
            handle.write("\t".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + "\n")
