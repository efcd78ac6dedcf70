"""The `bestie` command: predictions and overlays from a checkpoint; one-line errors otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bestie.checkpoint import save_checkpoint
from bestie.cli import main
from bestie.coco import decode_rle
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
    main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "2",
          "--device", "cpu"])
    results = json.loads((out / "predictions.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [Path(i["file_name"]).name for i in images] == ["a.jpg", "b.png"]
    assert results and {r["image_id"] for r in results} <= {1, 2}
    for result in results:
        image = images[result["image_id"] - 1]
        assert decode_rle(result["segmentation"]).shape == (image["height"], image["width"])
        assert result["category_id"] in (1, 2) and 0 <= result["score"] <= 1
    overlays = sorted(p.name for p in out.glob("*.png"))
    assert overlays == ["00001_a.png", "00002_b.png"]
    assert Image.open(out / "00002_b.png").size == (97, 61)


def test_batch_and_flip_options_agree_on_what_they_should(tmp_path: Path, voc_fixture_root: Path, checkpoint: Path) -> None:
    folder = _images(tmp_path, voc_fixture_root)
    runs = {}
    for batch in ("1", "2"):
        out = tmp_path / f"out{batch}"
        main(["predict", str(folder / "b.png"), "--checkpoint", str(checkpoint), "--out", str(out),
              "--batch-size", batch, "--no-flip"])
        runs[batch] = json.loads((out / "predictions.json").read_text())
    assert len(runs["1"]) == len(runs["2"])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_checkpoint", "checkpoint not found"),
        ("truncated_checkpoint", "truncated or corrupt checkpoint"),
        ("tampered_checkpoint", "checkpoint"),
        ("other_kind", "a 'pam' checkpoint, expected a 'bestie' one"),
        ("other_classes", "trained on classes"),
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
