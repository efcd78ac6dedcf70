"""The `bestie` command: predictions and overlays from a checkpoint; one-line errors otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from bestie.checkpoint import save_checkpoint
from bestie.cli import RESULT_MARKER, main
from bestie.coco import decode_segmentation
from bestie.errors import BestieError
from bestie.models import BestieNet

from .helpers import env_with_this_python

CLASSES = ["disc", "box"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = BestieNet(len(CLASSES), "small")
    with torch.no_grad():  # a confident "disc everywhere" net, so predictions are not empty
        model.seg_head.predictor.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        model.center_head.predictor.bias.fill_(0.5)
    path = tmp_path_factory.mktemp("ckpt") / "bestie.pt"
    save_checkpoint(path, model.state_dict(), kind="bestie", config={"backbone": "small"}, class_names=CLASSES)
    return path


def _images(tmp_path: Path, voc_fixture_root: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(voc_fixture_root / "JPEGImages/2007_000063.jpg", folder / "a.jpg")
    Image.open(folder / "a.jpg").resize((97, 61)).save(folder / "b.png")
    return folder


def test_help_lists_every_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "bestie.cli", "--help"], capture_output=True, text=True,
                            env=env_with_this_python())
    assert result.returncode == 0 and "predict" in result.stdout


def test_predict_writes_coco_results_and_overlays(tmp_path: Path, voc_fixture_root: Path, checkpoint: Path) -> None:
    folder = _images(tmp_path, voc_fixture_root)
    out = tmp_path / "out"
    main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"])
    results = json.loads((out / "predictions.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [Path(i["file_name"]).name for i in images] == ["a.jpg", "b.png"]
    assert results and {r["image_id"] for r in results} <= {1, 2}
    for result in results:
        image = images[result["image_id"] - 1]
        assert decode_segmentation(result["segmentation"]).shape == (image["height"], image["width"])
        assert result["category_id"] in (1, 2) and 0 <= result["score"] <= 1
    overlays = sorted(p.name for p in out.glob("*.png"))
    assert overlays == ["00001_a.png", "00002_b.png"]
    assert Image.open(out / "00002_b.png").size == (97, 61)


def test_predict_labels_with_the_recorded_category_ids(
    tmp_path: Path, voc_fixture_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # A COCO-trained model: the evaluate stage records the dataset's (non-contiguous) ids.
    from bestie.cli import DEFAULT_SETTINGS
    from bestie.config import InferenceParams
    from bestie.inference import settings_record
    from bestie.io import write_json

    folder = _images(tmp_path, voc_fixture_root)
    monkeypatch.chdir(tmp_path)
    write_json(DEFAULT_SETTINGS, settings_record(InferenceParams(), checkpoint, [18, 44]))
    main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", "out", "--device", "cpu"])
    results = json.loads(Path("out/predictions.json").read_text())
    categories = json.loads(Path("out/images.json").read_text())["categories"]
    assert results and {r["category_id"] for r in results} <= {18, 44}
    assert [(c["id"], c["name"]) for c in categories] == list(zip((18, 44), CLASSES))

    write_json(DEFAULT_SETTINGS, settings_record(InferenceParams(), checkpoint, [18, 44, 90]))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", "out2", "--device", "cpu"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: 3 category ids recorded for a checkpoint of 2 classes\n"
    assert not Path("out2").exists()


def _predictions_by_file(out: Path) -> dict[str, list]:
    images = {i["id"]: Path(i["file_name"]).name for i in json.loads((out / "images.json").read_text())["images"]}
    by_file: dict[str, list] = {name: [] for name in images.values()}
    for result in json.loads((out / "predictions.json").read_text()):
        by_file[images[result["image_id"]]].append({k: v for k, v in result.items() if k != "image_id"})
    return by_file


def test_an_image_predicts_the_same_alone_or_among_others(tmp_path: Path, voc_fixture_root: Path, checkpoint: Path) -> None:
    """No image's instances depend on the other inputs (no shared padding, no batch statistics)."""
    folder = _images(tmp_path, voc_fixture_root)
    Image.open(folder / "a.jpg").resize((150, 90)).save(folder / "c.png")
    Image.open(folder / "a.jpg").crop((0, 0, 200, 300)).save(folder / "d.png")
    main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "all")])
    together = _predictions_by_file(tmp_path / "all")
    assert len(together) == 4 and any(together.values())
    for name, predictions in together.items():
        main(["predict", str(folder / name), "--checkpoint", str(checkpoint), "--out", str(tmp_path / name)])
        assert _predictions_by_file(tmp_path / name)[name] == predictions, name


def test_settings_come_from_the_evaluate_record_of_this_checkpoint(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bestie.cli import DEFAULT_SETTINGS, inference_settings
    from bestie.config import InferenceParams
    from bestie.inference import settings_record
    from bestie.io import write_json

    monkeypatch.chdir(tmp_path)
    defaults, source = inference_settings(None, str(checkpoint), {})
    assert defaults == (InferenceParams(), None) and source.startswith("built-in defaults (no ")

    evaluated = InferenceParams(flip=False, center_thresh=0.25, nms_kernel=21)
    write_json(DEFAULT_SETTINGS, settings_record(evaluated, checkpoint, [3, 7]))
    recorded, source = inference_settings(None, str(checkpoint), {})
    assert recorded == (evaluated, (3, 7)) and "the evaluate stage's" in source
    recorded, source = inference_settings(None, str(checkpoint), {"flip": True, "seg_refine.iterations": 0})
    settings = recorded.settings
    assert settings.flip and settings.seg_refine.iterations == 0 and settings.center_thresh == 0.25
    assert recorded.category_ids == (3, 7) and "overridden: flip=True, seg_refine.iterations=0" in source

    other = tmp_path / "other.pt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")  # another file: another digest
    recorded, source = inference_settings(None, str(other), {})
    assert recorded == (InferenceParams(), None) and "records another checkpoint" in source
    with pytest.raises(BestieError, match="another checkpoint"):
        inference_settings(DEFAULT_SETTINGS, str(other), {})  # an explicit record must match
    with pytest.raises(BestieError, match="inference.nms_kernel must be odd"):
        inference_settings(None, str(checkpoint), {"nms_kernel": 4})


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_checkpoint", "checkpoint not found"),
        ("truncated_checkpoint", "truncated or corrupt checkpoint"),
        ("tampered_checkpoint", "checkpoint"),
        ("other_kind", "a 'pam' checkpoint, expected a 'bestie' one"),
        ("other_classes", "trained on classes"),
        ("missing_classes_file", "missing.txt: class list not found"),
        ("weights_of_another_class_count", "weights do not fit the model: tensor seg_head.predictor.weight is [4, "),
        ("flipped_weights", "fails its CRC-32 check"),
        ("unreadable_image", "unreadable or truncated image"),
        ("missing_input", "no such file or folder"),
    ],
)
def test_predict_fails_with_one_clear_line(tmp_path: Path, voc_fixture_root: Path, checkpoint: Path,
                                           setup: str, message: str, capsys: pytest.CaptureFixture) -> None:
    folder = _images(tmp_path, voc_fixture_root)
    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    extra: list[str] = []
    inputs = str(folder)
    if setup == "missing_checkpoint":
        ckpt.unlink()
    elif setup == "truncated_checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif setup == "tampered_checkpoint":
        data = bytearray(ckpt.read_bytes())
        data[100:400] = b"\x00" * 300
        ckpt.write_bytes(bytes(data))
    elif setup == "other_kind":
        save_checkpoint(ckpt, {}, kind="pam", config={}, class_names=CLASSES)
    elif setup == "other_classes":
        (tmp_path / "classes.txt").write_text("cat\ndog\n")
        extra = ["--classes", str(tmp_path / "classes.txt")]
    elif setup == "missing_classes_file":
        extra = ["--classes", str(tmp_path / "missing.txt")]
    elif setup == "weights_of_another_class_count":
        weights = BestieNet(len(CLASSES) + 1, "small").state_dict()
        save_checkpoint(ckpt, weights, kind="bestie", config={"backbone": "small"}, class_names=CLASSES)
    elif setup == "flipped_weights":
        with zipfile.ZipFile(ckpt) as archive:
            largest = max(archive.infolist(), key=lambda info: info.file_size)
        data = bytearray(ckpt.read_bytes())
        middle = largest.header_offset + largest.file_size // 2  # inside its stored bytes
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        ckpt.write_bytes(bytes(data))
    elif setup == "unreadable_image":
        (folder / "c.jpg").write_bytes(b"not an image")
    elif setup == "missing_input":
        inputs = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", inputs, "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *extra])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


# -- --out: a new or empty folder, or an earlier result; anything else is refused untouched ------


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("input_folder", "images: folder is not empty and holds no earlier result (no .bestie-predict file)"),
        ("current_folder", ".: folder is not empty and holds no earlier result"),
        ("existing_file", "notes.txt: exists and is not a folder"),
        ("foreign_folder", "thesis: folder is not empty and holds no earlier result"),
        ("result_with_a_users_file", "holds mine.txt, which the earlier result there did not"),
    ],
)
def test_predict_refuses_an_out_it_could_not_replace_safely(
    tmp_path: Path, voc_fixture_root: Path, checkpoint: Path, out: str, message: str,
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = _images(tmp_path, voc_fixture_root)
    inputs, target = str(folder), str(tmp_path / out)
    if out == "input_folder":  # bestie predict images/ --out images/
        target = str(folder)
    elif out == "current_folder":  # bestie predict a.jpg --out .
        monkeypatch.chdir(folder)
        inputs, target = "a.jpg", "."
    elif out == "existing_file":
        target = str(tmp_path / "notes.txt")
        Path(target).write_text("precious")
    elif out == "foreign_folder":
        target = str(tmp_path / "thesis")
        Path(target).mkdir()
        (Path(target) / "chapter1.tex").write_text("precious")
    elif out == "result_with_a_users_file":
        main(["predict", inputs, "--checkpoint", str(checkpoint), "--out", target])
        (Path(target) / "mine.txt").write_text("precious")
    capsys.readouterr()
    before = _snapshot(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("bestie.cli.load_bestie", no_work)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", inputs, "--checkpoint", str(checkpoint), "--out", target])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing added


def test_predict_fills_an_empty_folder_and_replaces_its_own_result(
    tmp_path: Path, voc_fixture_root: Path, checkpoint: Path
) -> None:
    folder = _images(tmp_path, voc_fixture_root)
    out = tmp_path / "out"
    out.mkdir()
    main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [RESULT_MARKER, "00001_a.png", "00002_b.png", "images.json", "predictions.json"]
    main(["predict", str(folder / "b.png"), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [RESULT_MARKER, "00001_b.png", "images.json", "predictions.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out"]  # no temporary left
