"""Instance pseudo labels for the training split: written once, read back by training.

The ``pseudo_labels`` stage stores, for every training image, the accepted instances of
semantic knowledge transfer (:mod:`bestie.transfer`) compactly: one instance-id PNG
(0 none, k instance k) and one JSON record of every instance's class and center.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bestie.data.png import read_label_png, write_label_png
from bestie.errors import BestieError
from bestie.io import read_json, write_json
from bestie.structures import PseudoLabel

__all__ = ["save_pseudo_labels", "load_pseudo_label", "load_records"]

RECORDS = "instances.json"


def save_pseudo_labels(directory: str | os.PathLike, results: Iterable[tuple[str, PseudoLabel]]) -> None:
    """Write ``<name>.png`` per image as ``results`` yields ``(name, pseudo label)``, then one
    ``instances.json`` (classes and centers) into ``directory``."""
    directory = Path(directory)
    records = {}
    for name, result in results:
        if result.num_instances > 254:
            raise BestieError(f"{name}: {result.num_instances} pseudo instances; a label PNG holds 254")
        write_label_png(directory / f"{name}.png", result.instance_map.astype(np.uint8))
        records[name] = {
            "classes": result.classes.tolist(),
            "centers": np.round(result.centers.astype(np.float64), 3).tolist(),
        }
    write_json(directory / RECORDS, records, indent=None)


def load_records(directory: str | os.PathLike) -> dict[str, dict]:
    return read_json(Path(directory) / RECORDS)


def load_pseudo_label(directory: str | os.PathLike, name: str, record: dict) -> PseudoLabel:
    path = Path(directory) / f"{name}.png"
    if not path.is_file():
        raise BestieError(f"{path}: pseudo label not found; re-run the pseudo_labels stage")
    return PseudoLabel(
        instance_map=read_label_png(path),
        classes=np.asarray(record["classes"], dtype=np.int64),
        centers=np.asarray(record["centers"], dtype=np.float32).reshape(-1, 2),
    )
