"""Checkpoints that say what they are: model weights plus the config and classes they were trained with.

A checkpoint is one ``torch.save`` file holding only tensors, dicts, lists, tuples, str,
int, float, bool and None, so it loads with ``torch.load(weights_only=True)`` (no code is
unpickled from a file someone sent you)::

    {"format": "bestie", "version": 1, "kind": "pam" | "bestie" | "maskrcnn",
     "config": {...}, "class_names": [...], "model": state_dict, "extra": {...}}

``extra`` holds whatever resuming needs (optimizer and scheduler state, epoch, ...).

``torch.save`` writes a zip archive whose records carry CRC-32s that ``torch.load`` does not
check: :func:`load_checkpoint` verifies them, so damaged weights are refused instead of
loading silently as other weights. :func:`load_weights` puts weights into a model, refusing
weights of another architecture or class count with one line naming the first differing tensor.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bestie.errors import BestieError
from bestie.io import atomic_file

__all__ = ["KINDS", "save_checkpoint", "load_checkpoint", "load_weights"]

KINDS = ("pam", "bestie", "maskrcnn", "wsss_network")
FORMAT = "bestie"
VERSION = 1

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)
_DOS_FOLDER = 0x10  # the "directory" bit of a zip record's external attributes


def _check_plain(value: Any, key: str) -> None:
    """Raise TypeError naming ``key`` for anything ``weights_only`` loading would refuse."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {key}: key {k!r} is not a str or int")
            _check_plain(v, f"{key}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]")
        return
    raise TypeError(
        f"checkpoint {key}: {type(value).__name__} cannot be loaded with weights_only=True; "
        "convert it to tensors, lists, dicts or numbers"
    )


def save_checkpoint(
    path: str | os.PathLike,
    model_state: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any],
    class_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (a crash never leaves a half-written file at ``path``).

    Args:
        model_state: the model's ``state_dict()``.
        kind: what network the weights belong to, one of :data:`KINDS`.
        config: the params the model was built and trained with (plain values).
        class_names: the dataset's classes, in label order.
        extra: resumable training state (optimizer, epoch, ...), plain values and tensors.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": dict(config),
        "class_names": list(class_names),
        "model": {name: tensor.detach().cpu() for name, tensor in model_state.items()},
        "extra": dict(extra or {}),
    }
    _check_plain(payload, "checkpoint")
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)


def _verify_records(path: Path) -> None:
    """Read every record of the checkpoint's zip archive against its CRC-32.

    Also refused: a record marked as a folder (the MS-DOS attribute), which torch's reader
    reads as empty, loading its tensor as uninitialised memory without an error; every
    record ``torch.save`` writes is a file.

    Raises:
        BestieError: naming the first damaged record.
        zipfile.BadZipFile: not a (complete) zip archive.
    """
    with zipfile.ZipFile(path) as archive:
        for record in archive.infolist():
            if record.external_attr & _DOS_FOLDER:
                raise BestieError(f"{path}: corrupt checkpoint: record {record.filename!r} is marked as a folder")
        damaged = archive.testzip()
    if damaged is not None:
        raise BestieError(f"{path}: corrupt checkpoint: record {damaged!r} fails its CRC-32 check")


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    class_names: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    Args:
        kind: if given, the checkpoint must be of this kind.
        class_names: if given, the checkpoint must have been trained on exactly these classes
            (same names, same order).
        map_location: where tensors are loaded (default: CPU).
    Returns:
        the checkpoint dict (keys ``kind``, ``config``, ``class_names``, ``model``, ``extra``, ...).
    Raises:
        BestieError: missing, truncated or corrupt file (a record failing its CRC-32 is
            named); not a bestie checkpoint; another kind; another class set.
    """
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: checkpoint not found")
    try:
        _verify_records(path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    # Damage the CRC-32s cannot see (a cut or garbled archive directory) fails in zipfile
    # (BadZipFile, or an OSError seeking to a garbled offset) or torch.load, whose error
    # depends on where the damage is: a truncated zip archive is a RuntimeError from its
    # reader, refused or garbage pickle opcodes are UnpicklingError / KeyError / IndexError,
    # cut bytes EOFError, flipped bytes in a string UnicodeDecodeError (a ValueError).
    except (zipfile.BadZipFile, OSError, RuntimeError, pickle.UnpicklingError, EOFError, KeyError,
            IndexError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BestieError(f"{path}: unreadable, truncated or corrupt checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise BestieError(f"{path}: not a bestie checkpoint")
    if checkpoint.get("version") != VERSION:
        raise BestieError(
            f"{path}: checkpoint format version {checkpoint.get('version')!r}; "
            f"this code reads version {VERSION}"
        )
    if kind is not None and checkpoint["kind"] != kind:
        raise BestieError(f"{path}: a {checkpoint['kind']!r} checkpoint, expected a {kind!r} one")
    if class_names is not None and list(checkpoint["class_names"]) != list(class_names):
        raise BestieError(
            f"{path}: trained on classes {list(checkpoint['class_names'])}, but the dataset has "
            f"{list(class_names)}; re-run the stage that trained it"
        )
    return checkpoint


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str | os.PathLike) -> None:
    """Load ``state_dict`` into ``model`` (strictly), once it is known to fit.

    ``load_state_dict`` refuses misfitting weights too, but with a traceback listing every
    tensor; a checkpoint of another backbone, width or class count is a user's mistake,
    named here in one line by its first differing tensor, in the model's order.

    Args:
        source: where the weights come from (the checkpoint path), for the message.
    Raises:
        BestieError: a tensor of the model missing from ``state_dict``, one of another
            shape, or one the model has no place for.
    """
    expected = model.state_dict()
    misfit = f"{source}: weights do not fit the model:"
    for name, tensor in expected.items():
        if name not in state_dict:
            raise BestieError(f"{misfit} the checkpoint lacks tensor {name}")
        if state_dict[name].shape != tensor.shape:
            raise BestieError(
                f"{misfit} tensor {name} is {list(state_dict[name].shape)} in the checkpoint, "
                f"{list(tensor.shape)} in the model"
            )
    unexpected = [name for name in state_dict if name not in expected]
    if unexpected:
        raise BestieError(f"{misfit} the checkpoint's tensor {unexpected[0]} has no place in the model")
    model.load_state_dict(state_dict)
