"""Reading images; atomic file and directory writes; metrics files.

DVC caches whatever a stage leaves behind, so a stage must never leave a half-written
output. Everything is written next to its destination under a temporary name and renamed
into place only once complete (rename is atomic within one file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on clean exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces ``path`` on clean exit.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
