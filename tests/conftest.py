"""Shared fixtures: the real VOC image of ../shared/fixtures and small writable VOC roots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_fixture_root() -> Path:
    env = os.environ.get("BESTIE_VOC_FIXTURE")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "fixtures" / "voc", REPO / "tests" / "fixtures" / "voc"]
    for path in candidates:
        if (path / "JPEGImages").is_dir():
            return path
    pytest.skip("the VOC fixture (../shared/fixtures/voc) is not available")


@pytest.fixture(scope="session")
def voc_fixture_root() -> Path:
    return _find_fixture_root()


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
