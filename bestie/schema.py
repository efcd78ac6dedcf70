"""Frozen dataclasses as a validated schema for YAML: fields carry their limits.

A field made by :func:`field_with_limits` holds its limits in its metadata: ``min``/``max``
(inclusive), ``choices`` and ``parity`` (``"odd"``, e.g. a centred window's width, or
``"even"``) bound a value, or each item of a list; ``nonempty`` refuses an empty string or
list. :func:`build` checks a raw mapping against such a dataclass completely (unknown keys,
types, limits) and raises one-line :class:`~bestie.errors.BestieError` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from bestie.errors import BestieError

__all__ = ["field_with_limits", "build", "check_value", "read_yaml_file"]

_PARITY = {"even": 0, "odd": 1}


def field_with_limits(default: Any, **limits: Any) -> Any:
    """A dataclass field with validation limits (``min``, ``max``, ``choices``, ``parity``, ``nonempty``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=limits)
    return field(default=default, metadata=limits)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, key: str, limits: dict) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BestieError(f"params: {key} must be a mapping, got {value!r}")
        return build(tp, value, key)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, list):
            raise BestieError(f"params: {key} must be a list, got {value!r}")
        items = [check_value(v, item_tp, f"{key}[{i}]", limits) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (tp,) = [o for o in options if o is not type(None)]
    # bool is an int in Python; a YAML `yes` must not pass as a count, nor 1 as a flag.
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise BestieError(
            f"params: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if "choices" in limits and value not in limits["choices"]:
        choices = " | ".join(map(str, limits["choices"]))
        raise BestieError(f"params: {key} must be one of {choices}, got {value!r}")
    if "min" in limits and value < limits["min"]:
        raise BestieError(f"params: {key} must be >= {limits['min']}, got {value!r}")
    if "max" in limits and value > limits["max"]:
        raise BestieError(f"params: {key} must be <= {limits['max']}, got {value!r}")
    if "parity" in limits and value % 2 != _PARITY[limits["parity"]]:
        raise BestieError(f"params: {key} must be {limits['parity']}, got {value!r}")
    return value


def build(cls: type, raw: dict, prefix: str = "") -> Any:
    """``cls(**raw)`` once every key of ``raw`` is known, of its field's type and within its limits."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise BestieError(
            f"params: unknown key {where}{unknown[0]} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        limits = dict(fields[name].metadata)
        kwargs[name] = check_value(value, hints[name], key, limits)
        if limits.get("nonempty") and not kwargs[name]:  # the field as a whole, not its items
            raise BestieError(f"params: {key} must not be empty")
    return cls(**kwargs)


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``5e-05`` (no dot) is a string; ``dvc exp run -S`` writes
    small floats that way (YAML 1.2), so such floats are read as YAML 1.2 reads them."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml_file(path: str | Path) -> Any:
    """The YAML of a file, unvalidated; a missing file or bad YAML is one-line :class:`BestieError`."""
    path = Path(path)
    if not path.is_file():
        raise BestieError(f"{path}: file not found")
    try:
        return yaml.load(path.read_text(), Loader=_ParamsLoader)
    except yaml.YAMLError as err:  # its text spans several lines: keep the problem and where
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BestieError(f"{path}: not valid YAML ({problem}{where})") from None
