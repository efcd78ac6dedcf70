"""Where and how reproducibly a stage computes: device choice, seeding, mixed precision."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from bestie.errors import BestieError

__all__ = ["select_device", "seed_everything", "autocast"]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; or an explicit
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Asking for a CUDA device that is not there is a
    :class:`BestieError`, not a silent fallback to the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BestieError(f"device: unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BestieError(f"device: {name} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BestieError(
                f"device: {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type != "cpu":
        raise BestieError(f"device: unsupported device {name!r} (auto, cpu, cuda or cuda:N)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision (float16) on CUDA when ``enabled``; a no-op on the CPU, where
    float16 kernels are slow or missing and bfloat16 would change the numbers silently."""
    with torch.autocast(device.type, enabled=enabled and device.type == "cuda"):
        yield
