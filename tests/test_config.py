"""Params are validated once, completely, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bestie.config import Params, load_params, parse_params
from bestie.errors import BestieError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.supervision in ("cls", "point", "full")
    assert params.data.root == "data/synthetic"


def test_defaults_match_the_repo_params_file() -> None:
    # params.yaml spells out every knob; the dataclass defaults must say the same, so a
    # section left out of a user's params file behaves like the documented default.
    assert load_params(REPO / "params.yaml") == Params()


def test_ints_widen_to_floats() -> None:
    assert parse_params({"synthesize": {"touching_share": 1}}).synthesize.touching_share == 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"supervision": "bbox"}, "supervision must be one of cls | point | full, got 'bbox'"),
        ({"seed": "x"}, "seed must be int"),
        ({"seed": 1.5}, "seed must be int"),
        ({"seed": True}, "seed must be int"),
        ({"synthesize": {"num_train": 0}}, "synthesize.num_train must be >= 1"),
        ({"synthesize": {"touching_share": 1.5}}, "synthesize.touching_share must be <= 1.0"),
        ({"synthesize": {"min_side": 150, "max_side": 100}}, "must not exceed synthesize.max_side"),
        ({"data": {"rot": "x"}}, "unknown key data.rot"),
        ({"colour": 1}, "unknown key colour"),
        ({"data": "voc"}, "data must be a mapping"),
        ({"inference": {"seg_refine": {"iterations": -1}}}, "inference.seg_refine.iterations must be >= 0"),
        ({"inference": {"seg_refine": {"steps": 3}}}, "unknown key inference.seg_refine.steps"),
        ({"inference": {"seg_refine": {"dilations": []}}}, "inference.seg_refine.dilations must not be empty"),
        ({"inference": {"nms_kernel": 40}}, "inference.nms_kernel must be odd, got 40"),
    ],
)
def test_bad_values_name_their_key(raw: dict, message: str) -> None:
    with pytest.raises(BestieError, match=message.replace("|", r"\|").replace(".", r"\.")):
        parse_params(raw)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(BestieError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("supervision: [cls\n")
    with pytest.raises(BestieError, match="not valid YAML"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(BestieError, match="top level must be a mapping"):
        load_params(listed)
