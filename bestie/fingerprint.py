"""Fingerprints of training runs: a resumable state checkpoint is only valid for the run it came from."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_fingerprint"]


def run_fingerprint(config: Mapping[str, Any], inputs: Sequence[str | os.PathLike]) -> str:
    """16 hex digits hashing ``config`` (JSON-able) and the bytes of ``inputs`` (files or folders).

    Folders are walked recursively in sorted order, so the fingerprint does not depend on the
    file system's listing order; file names count as well as contents.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for root in map(Path, inputs):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
