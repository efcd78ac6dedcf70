from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bestie.checkpoint import load_checkpoint, load_weights, save_checkpoint
from bestie.errors import BestieError
from bestie.models import BestieNet

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


def _record_data(path: Path, name: str) -> tuple[int, int]:
    """(offset, size) of the stored bytes of record ``name`` of a torch zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def test_flipped_bytes_in_the_weights_name_their_record(tmp_path: Path) -> None:
    """torch.load does not check the archive's CRC-32s: without the check these load silently."""
    path = tmp_path / "pam.pt"
    save_checkpoint(path, torch.nn.Linear(64, 8).state_dict(), kind="pam", config={}, class_names=CLASSES)
    offset, size = _record_data(path, "archive/data/0")  # the 8 x 64 weight matrix
    assert size == 8 * 64 * 4
    data = bytearray(path.read_bytes())
    data[offset + 100 : offset + 164] = bytes(b ^ 0xFF for b in data[offset + 100 : offset + 164])
    path.write_bytes(bytes(data))
    with pytest.raises(BestieError, match=re.escape("corrupt checkpoint: record 'archive/data/0' fails its CRC-32 check")):
        load_checkpoint(path)


def test_a_record_marked_as_a_folder_is_refused(saved) -> None:
    """torch's reader reads such a record as empty: its tensor would be uninitialised memory."""
    path, _ = saved
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    data = bytearray(path.read_bytes())
    entry = data.rindex(info.filename.encode()) - 46  # its entry in the central directory, at the end
    data[entry + 38] |= 0x10  # its external attributes: the MS-DOS folder bit
    path.write_bytes(bytes(data))
    with pytest.raises(BestieError, match="record 'archive/data/0' is marked as a folder"):
        load_checkpoint(path)


def _misfit(model: torch.nn.Module, weights: dict) -> str:
    with pytest.raises(BestieError) as info:
        load_weights(model, weights, source="ckpt.pt")
    return str(info.value)


def test_weights_that_fit_load() -> None:
    source, target = torch.nn.Conv2d(3, 2, 1), torch.nn.Conv2d(3, 2, 1)
    load_weights(target, source.state_dict(), source="ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"weight": torch.zeros(2, 3, 1, 1)}, "ckpt.pt: weights do not fit the model: the checkpoint lacks tensor bias"),
        ({"weight": torch.zeros(2, 3, 3, 3), "bias": torch.zeros(2)},
         "ckpt.pt: weights do not fit the model: tensor weight is [2, 3, 3, 3] in the checkpoint, [2, 3, 1, 1] in the model"),
        ({"weight": torch.zeros(2, 3, 1, 1), "bias": torch.zeros(2), "scale": torch.ones(1)},
         "ckpt.pt: weights do not fit the model: the checkpoint's tensor scale has no place in the model"),
    ],
)
def test_misfitting_weights_name_the_first_differing_tensor(weights: dict, message: str) -> None:
    model = torch.nn.Conv2d(3, 2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _misfit(model, weights) == message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left untouched


def test_a_checkpoint_of_another_class_count_or_backbone() -> None:
    assert _misfit(BestieNet(2, "small"), BestieNet(3, "small").state_dict()) == (
        "ckpt.pt: weights do not fit the model: tensor seg_head.predictor.weight is [4, 64, 1, 1] "
        "in the checkpoint, [3, 64, 1, 1] in the model"
    )
    assert _misfit(BestieNet(2, "small"), {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}) == (
        "ckpt.pt: weights do not fit the model: the checkpoint lacks tensor backbone.stem.0.0.weight"
    )
