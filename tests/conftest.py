"""Shared fixtures: the real VOC image of tests/fixtures/voc and small writable VOC roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def voc_fixture_root() -> Path:
    """One real PASCAL VOC 2012 image in the dataset's own layout (its README says what a
    correct reader finds), kept in the repository so that every clone runs every test."""
    return REPO / "tests" / "fixtures" / "voc"


@pytest.fixture
def voc_copy(tmp_path: Path, voc_fixture_root: Path) -> Path:
    """A writable copy of the real VOC fixture, to break in tests of bad input."""
    root = tmp_path / "voc"
    shutil.copytree(voc_fixture_root, root)
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: one thread is faster than contending for the machine's cores."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
