"""Presets: committed partial params files that hold a published configuration.

A preset (``presets/NAME.yaml``) has the layout of ``params.yaml`` and only the keys it changes.
``bestie preset NAME`` turns it into ``dvc exp run -S key=value ...``: a DVC experiment, recorded
with its params like any other, on top of the workspace's ``params.yaml``. Further ``dvc exp run``
arguments follow the name (``--temp``, ``-n``, more ``-S``, which win over the preset's).

Why not DVC's Hydra composition, which DVC documents for params profiles: once enabled, every
``dvc exp run`` rewrites ``params.yaml`` from ``conf/`` (without its comments), so the project's
commented ``params.yaml`` would stop being the file users edit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bestie.config import Params, parse_params, read_params_file
from bestie.errors import BestieError

__all__ = ["PRESET_DIR", "preset_path", "load_preset", "merge_params", "set_param_overrides", "exp_run_command"]

PRESET_DIR = Path("presets")
# Strings Hydra reads as strings without quotes (names, relative paths); others are quoted.
_PLAIN_STRING = re.compile(r"[A-Za-z_/][\w./-]*")
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}


def preset_path(name: str) -> Path:
    """``presets/NAME.yaml`` for a bare name, else ``name`` itself (a path to any preset file)."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(name)
    return PRESET_DIR / f"{name}.yaml"


def merge_params(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay``'s values, mappings merged key by key (lists are replaced whole)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_params(merged[key], value)
        merged[key] = value
    return merged


def load_preset(path: str | Path, base: str | Path = "params.yaml") -> tuple[dict, Params]:
    """The preset at ``path`` and the params it gives on top of the ``base`` params file.

    Validated as ``params.yaml`` is (every key known, every value in range): a bad preset is a
    one-line :class:`BestieError` naming the preset file and the key, and nothing runs.
    """
    overlay = read_params_file(path)
    if not isinstance(overlay, dict) or not overlay:
        raise BestieError(f"{path}: a preset is a non-empty mapping of params")
    merged = merge_params(read_params_file(base) or {}, overlay)  # a bad base names itself
    try:
        params = parse_params(merged)
    except BestieError as err:
        raise BestieError(f"{path}: {err}") from None
    return overlay, params


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, which ``dvc exp run -S`` parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_STRING.fullmatch(value) and value.lower() not in _HYDRA_WORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(map(_hydra_value, value)) + "]"
    raise TypeError(f"no -S form for {value!r}")


def set_param_overrides(overlay: dict, prefix: str = "") -> list[str]:
    """``key.sub=value`` for every leaf of ``overlay``, in file order (``-S`` arguments)."""
    overrides = []
    for key, value in overlay.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            overrides += set_param_overrides(value, f"{name}.")
        else:
            overrides.append(f"{name}={_hydra_value(value)}")
    return overrides


def exp_run_command(overlay: dict, extra: list[str]) -> list[str]:
    """``dvc exp run`` with one ``-S`` per preset value, then ``extra`` (later ``-S`` win)."""
    command = ["dvc", "exp", "run"]
    for override in set_param_overrides(overlay):
        command += ["-S", override]
    return command + list(extra)
