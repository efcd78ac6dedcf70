"""Params are validated once, completely, with errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from bestie.config import MAX_SEED, MaskRCNNParams, Params, load_params, parse_params
from bestie.errors import BestieError
from bestie.maskrcnn import MASKRCNN_BACKBONES
from bestie.models.backbones import BACKBONES

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
        # Each of these was accepted once and failed only after expensive work.
        ({"maskrcnn": {"min_size": []}}, "maskrcnn.min_size must not be empty"),
        ({"maskrcnn": {"min_size": [-5]}}, "maskrcnn.min_size[0] must be >= 1, got -5"),
        ({"maskrcnn": {"min_size": [128, 0]}}, "maskrcnn.min_size[1] must be >= 1, got 0"),
        ({"train": {"refine_nms_kernel": 40}}, "train.refine_nms_kernel must be odd, got 40"),
        ({"classifier": {"lr_steps": [-3]}}, "classifier.lr_steps[0] must be >= 1, got -3"),
        ({"classifier": {"lr_steps": [37, 32]}}, "classifier.lr_steps must be strictly increasing, got [37, 32]"),
        ({"classifier": {"lr_steps": [32, 32]}}, "classifier.lr_steps must be strictly increasing, got [32, 32]"),
        ({"classifier": {"epochs": 30}}, "classifier.lr_steps ([32, 37]) must not exceed classifier.epochs (30)"),
        ({"data": {"root": ""}}, "data.root must not be empty"),
        ({"data": {"train_split": ""}}, "data.train_split must not be empty"),
        ({"data": {"val_split": ""}}, "data.val_split must not be empty"),
        ({"data": {"format": "yolo"}}, "data.format must be one of voc | coco, got 'yolo'"),
        ({"data": {"coco": {"train_images": ""}}}, "data.coco.train_images must not be empty"),
        ({"data": {"coco": {"val_points": 3}}}, "data.coco.val_points must be str, got 3"),
        # The rest of the limits, one case each.
        ({"peaks": {"smooth_kernel": 2}}, "peaks.smooth_kernel must be odd, got 2"),
        ({"peaks": {"nms_kernel": 14}}, "peaks.nms_kernel must be odd, got 14"),
        ({"classifier": {"width": 9}}, "classifier.width must be even, got 9"),
        ({"wsss": {"scales": []}}, "wsss.scales must not be empty"),
        ({"wsss": {"dilations": []}}, "wsss.dilations must not be empty"),
        ({"wsss": {"scales": [1.0, 0.0]}}, "wsss.scales[1] must be >= 0.1, got 0.0"),
        ({"inference": {"center_thresh": 1.5}}, "inference.center_thresh must be <= 1.0, got 1.5"),
        ({"train": {"refine_thresh": 2.0}}, "train.refine_thresh must be <= 1.0, got 2.0"),
        ({"seed": MAX_SEED + 1}, f"seed must be <= {MAX_SEED}, got {MAX_SEED + 1}"),
        ({"synthesize": {"seed": -1}}, "synthesize.seed must be >= 0, got -1"),
        ({"maskrcnn": {"min_size": ["800"]}}, "maskrcnn.min_size[0] must be int, got '800'"),
        ({"wsss": {"network": "yes"}}, "wsss.network must be bool, got 'yes'"),
        ({"wsss": {"network": 1}}, "wsss.network must be bool, got 1"),
        ({"wsss_network": {"iterations": 0}}, "wsss_network.iterations must be >= 1, got 0"),
        ({"wsss_network": {"optimizer": "lbfgs"}}, "wsss_network.optimizer must be one of adam | adamw | sgd"),
        ({"wsss_network": {"min_confidence": 1.5}}, "wsss_network.min_confidence must be <= 1.0, got 1.5"),
        ({"wsss_network": {"scale_min": 1.5, "scale_max": 1.2}},
         "wsss_network.scale_min (1.5) must not exceed wsss_network.scale_max (1.2)"),
        ({"wsss_network": {"epochs": 3}}, "unknown key wsss_network.epochs"),
        ({"synthesize": {"style": "photo"}}, "synthesize.style must be one of embedded | heldout | heldout_looks, got 'photo'"),
    ],
)
def test_bad_values_name_their_key(raw: dict, message: str) -> None:
    with pytest.raises(BestieError, match=re.escape(message)):
        parse_params(raw)


@pytest.mark.parametrize("section", ["classifier", "wsss_network", "train"])
def test_backbone_choices_are_the_registry(section: str) -> None:
    for name in BACKBONES:
        assert getattr(parse_params({section: {"backbone": name}}), section).backbone == name
    with pytest.raises(BestieError, match=re.escape(f"{section}.backbone must be one of small | resnet50 | "
                                                    "resnet101 | vgg16 | hrnet_w32 | hrnet_w48, got 'hrnet'")):
        parse_params({section: {"backbone": "hrnet"}})


def test_maskrcnn_backbone_choices_are_its_builders() -> None:
    (backbone,) = [f for f in dataclasses.fields(MaskRCNNParams) if f.name == "backbone"]
    assert backbone.metadata["choices"] == MASKRCNN_BACKBONES


def test_floats_as_dvc_writes_them(tmp_path: Path) -> None:
    """`dvc exp run -S train.lr=5e-5` writes `lr: 5e-05`, a string to YAML 1.1 readers."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 5e-05\n  warmup_iters: 10\ndata:\n  root: '1e3'\n")
    params = load_params(path)
    assert (params.train.lr, params.train.warmup_iters, params.data.root) == (5e-05, 10, "1e3")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(BestieError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("supervision: [cls\n")
    with pytest.raises(BestieError, match=re.escape("not valid YAML (expected ',' or ']', but got '<stream end>' "
                                                    "at line 2, column 1)")) as info:
        load_params(bad)
    assert "\n" not in str(info.value)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(BestieError, match="top level must be a mapping"):
        load_params(listed)


def test_the_limits_accept_their_edges() -> None:
    params = parse_params({
        "classifier": {"epochs": 5, "lr_steps": [1, 5], "width": 8},
        "maskrcnn": {"min_size": [1]},
        "train": {"refine_nms_kernel": 1, "refine_thresh": 1.0},
        "inference": {"nms_kernel": 1, "center_thresh": 0.0},
        "seed": MAX_SEED,
    })
    assert params.classifier.lr_steps == [1, 5] and params.seed == MAX_SEED
    assert parse_params({"classifier": {"lr_steps": []}}).classifier.lr_steps == []  # no lr drop


def _leaf_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any, dict]]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _leaf_fields(hints[field.name], f"{key}.")
        else:
            yield key, hints[field.name], dict(field.metadata)


def test_every_field_has_limits() -> None:
    """A number without a range, or a text or list that may be empty, is a crash waiting for
    a typo: every field says what it accepts (flags excepted)."""
    for key, tp, limits in _leaf_fields(Params):
        if tp is bool:
            continue
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if item in (int, float):
            assert "min" in limits or "choices" in limits, key
        if tp is str:
            assert "choices" in limits or limits.get("nonempty"), key
