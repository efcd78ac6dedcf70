"""Presets: every committed one validates over params.yaml; `bestie preset` hands DVC exactly its values."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides

from bestie.cli import main
from bestie.config import DataParams, load_params, parse_params
from bestie.errors import BestieError
from bestie.presets import exp_run_command, load_preset, merge_params, preset_path, set_param_overrides

from .helpers import REPO

PRESETS = sorted((REPO / "presets").glob("*.yaml"))


def test_there_are_voc_and_coco_presets() -> None:
    assert {"voc_paper.yaml", "coco_paper.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates_over_params_yaml(path: Path, tmp_path: Path) -> None:
    overlay, params = load_preset(path, REPO / "params.yaml")
    assert params.train.pretrained and params.train.backbone == "hrnet_w48"
    assert overlay


def test_voc_preset_is_the_papers_setting() -> None:
    _, params = load_preset(REPO / "presets/voc_paper.yaml", REPO / "params.yaml")
    train = params.train
    assert (train.backbone, train.pretrained, train.crop_size, train.batch_size, train.iterations) == (
        "hrnet_w48", True, 416, 16, 50000)
    assert (train.lr, train.poly_power, train.warmup_iters, train.bn_momentum) == (5e-5, 0.9, 2000, 0.01)
    assert params.seed == 3407 and params.data.train_split == "train_aug"
    classifier = params.classifier
    assert (classifier.backbone, classifier.pretrained, classifier.alpha, classifier.epochs,
            classifier.lr_steps, classifier.lr, classifier.crop_size) == ("vgg16", True, 0.7, 15, [5, 10], 1e-3, 321)
    assert params.peaks.pseudo_thresh == 0.7
    assert (params.maskrcnn.backbone, params.maskrcnn.pretrained, params.maskrcnn.min_size[-1]) == (
        "resnet50_fpn", True, 800)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_dvc_applies_exactly_the_preset(path: Path, tmp_path: Path) -> None:
    """The -S arguments, applied by DVC's own code to params.yaml, give the validated params;
    a later -S wins over the preset's value."""
    overlay, expected = load_preset(path, REPO / "params.yaml")
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    command = exp_run_command(overlay, ["--temp", "-S", "train.iterations=7"])
    assert command[:3] == ["dvc", "exp", "run"] and command[-3:] == ["--temp", "-S", "train.iterations=7"]
    apply_overrides(params_file, [a for a, flag in zip(command[1:], command) if flag == "-S"])
    assert load_params(params_file) == dataclasses.replace(
        expected, train=dataclasses.replace(expected.train, iterations=7))
    assert "# Which labels the weak pipeline may use" in params_file.read_text()  # comments kept


def test_values_that_need_quoting_reach_dvc_as_strings(tmp_path: Path) -> None:
    overlay = {"data": {"root": "/data/my VOC:2012", "train_split": "null", "val_split": "1e3"}}
    assert set_param_overrides(overlay)[0] == "data.root='/data/my VOC:2012'"
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    apply_overrides(params_file, set_param_overrides(overlay))
    assert load_params(params_file).data == DataParams(**overlay["data"])


def test_merge_replaces_lists_and_merges_mappings() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert merge_params(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 0}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}


def test_preset_names_and_paths() -> None:
    assert preset_path("voc_paper") == Path("presets/voc_paper.yaml")
    assert preset_path("my/own.yaml") == Path("my/own.yaml")


def test_a_bad_preset_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  backbone: hrnet_w18\n")
    with pytest.raises(BestieError, match=r"bad.yaml: params: train.backbone must be one of .* got 'hrnet_w18'"):
        load_preset(bad, REPO / "params.yaml")
    bad.write_text("train:\n  itrations: 5\n")
    with pytest.raises(BestieError, match=r"bad.yaml: params: unknown key train.itrations"):
        load_preset(bad, REPO / "params.yaml")
    bad.write_text("[]\n")
    with pytest.raises(BestieError, match="bad.yaml: a preset is a non-empty mapping"):
        load_preset(bad, REPO / "params.yaml")


def test_cli_dry_run_prints_the_dvc_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets/mine.yaml").write_text("train:\n  backbone: hrnet_w32\n  lr: 5.0e-05\n")
    main(["preset", "--dry-run", "mine", "--temp", "-n", "x"])
    assert capsys.readouterr().out.strip() == (
        "dvc exp run -S train.backbone=hrnet_w32 -S train.lr=5e-05 --temp -n x")
    with pytest.raises(SystemExit) as exit_info:
        main(["preset", "--dry-run", "missing"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: presets/missing.yaml: params file not found"
    assert parse_params(None) == load_params(tmp_path / "params.yaml")  # the defaults are params.yaml's
