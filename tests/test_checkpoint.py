from __future__ import annotations

import numpy as np
import pytest
import torch

from bestie.checkpoint import load_checkpoint, save_checkpoint
from bestie.errors import BestieError

CLASSES = ("disc", "box")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "models" / "pam.pt"  # the parent is created
    state = torch.nn.Conv2d(3, 2, 1).state_dict()
    save_checkpoint(
        path, state, kind="pam", config={"alpha": 0.7, "lr_steps": [5, 10], "backbone": "small"},
        class_names=CLASSES, extra={"epoch": 3, "optimizer": {"state": {}, "lrs": [0.1]}},
    )
    return path, state


def test_round_trip_loads_with_weights_only(saved):
    path, state = saved
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "pam" and raw["class_names"] == list(CLASSES)
    checkpoint = load_checkpoint(path, kind="pam", class_names=CLASSES)
    assert checkpoint["config"] == {"alpha": 0.7, "lr_steps": [5, 10], "backbone": "small"}
    assert checkpoint["extra"]["epoch"] == 3
    for name, tensor in state.items():
        assert torch.equal(checkpoint["model"][name], tensor)
    assert [p.name for p in path.parent.iterdir()] == ["pam.pt"]  # no temporary left behind


def test_missing_file(tmp_path):
    with pytest.raises(BestieError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_are_bestie_errors(saved, damage):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x80\x02garbage" * 50, "empty": b""}[damage])
    with pytest.raises(BestieError, match="corrupt"):
        load_checkpoint(path)


def test_a_plain_torch_file_is_not_a_bestie_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(BestieError, match="not a bestie checkpoint"):
        load_checkpoint(path)


def test_another_kind_or_class_set_is_refused(saved):
    path, _ = saved
    with pytest.raises(BestieError, match="'pam' checkpoint, expected a 'bestie'"):
        load_checkpoint(path, kind="bestie")
    with pytest.raises(BestieError, match="trained on classes"):
        load_checkpoint(path, class_names=("box", "disc"))  # same names, other order


def test_values_weights_only_cannot_load_are_refused_at_save(tmp_path):
    path = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=r"config.mean"):
        save_checkpoint(path, {}, kind="pam", config={"mean": np.zeros(3)}, class_names=CLASSES)
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(path, {}, kind="vgg", config={}, class_names=CLASSES)
    assert not path.exists()
