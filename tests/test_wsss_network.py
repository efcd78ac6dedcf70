"""The seed's second WSSS step: its loss, its training, its predictions, and the stage's switch."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from bestie.data.datasets import SegmentationDataset
from bestie.data.manifest import ImageRecord
from bestie.data.png import read_label_png, write_label_png
from bestie.data.sources.voc import VOCDataset
from bestie.distributed import DistContext
from bestie.errors import BestieError
from bestie.models import SegmentationNet, SmallBackbone
from bestie.training import LoopSettings, build_optimizer, iteration_batches, poly_lr, train
from bestie.wsss_network import SegmentationTraining, confident_labels, predict_semantic_map, restrict_to_classes

from .helpers import run_stage, write_params

CPU = DistContext(0, 1, torch.device("cpu"))
ID = "2007_000063"


class FixedLogits(nn.Module):
    """A "network" whose segmentation logits are a parameter."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.logits}


def test_the_loss_ignores_unsure_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, :2] = 255
    batch = {"image": torch.zeros(2, 3, 4, 5), "semantic": labels}
    loss = SegmentationTraining(FixedLogits(logits))(batch, 0)["loss"]
    known = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[known], labels[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    # Whatever the network says at an unsure pixel costs nothing and teaches nothing.
    changed = logits.clone()
    changed[0, :, :2] = 100 * torch.randn(3, 2, 5)
    model = FixedLogits(changed)
    loss_changed = SegmentationTraining(model)(batch, 0)["loss"]
    assert loss_changed.item() == pytest.approx(loss.item(), rel=1e-6)
    loss_changed.backward()
    assert model.logits.grad[0, :, :2].abs().max() == 0
    assert model.logits.grad[0, :, 2:].abs().max() > 0

    all_unsure = {"image": batch["image"], "semantic": torch.full_like(labels, 255)}
    assert SegmentationTraining(FixedLogits(logits))(all_unsure, 0)["loss"].item() == 0.0


class ToySquares(Dataset):
    """32 px images: a bright square of class 1 on a dark field, its border unsure (255)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng([index, seed])
        y, x, side = *rng.integers(2, 14, size=2).tolist(), int(rng.integers(8, 16))
        image = torch.full((3, 32, 32), -1.0)
        image[:, y : y + side, x : x + side] = 1.0
        labels = torch.zeros(32, 32, dtype=torch.int64)
        labels[y - 1 : y + side + 1, x - 1 : x + side + 1] = 255
        labels[y + 1 : y + side - 1, x + 1 : x + side - 1] = 1
        return {"image": image + 0.1 * torch.from_numpy(rng.standard_normal((3, 32, 32))).float(), "semantic": labels}


def train_on_toy_squares(objective: nn.Module, iterations: int = 40) -> list[dict]:
    """``objective`` (a network + loss, as :func:`bestie.training.train` takes) trained on
    :class:`ToySquares` for ``iterations``, every one logged."""
    return train(
        objective,
        iteration_batches(ToySquares(), default_collate, 4, 0, iterations, 0, CPU, 0),
        build_optimizer("adam", objective.parameters(), 1e-2, 0.0),
        partial(poly_lr, total=iterations, warmup=2, power=0.9),
        LoopSettings(iterations, log_every=1, checkpoint_every=iterations, seed=0),
        CPU,
    )


def test_a_tiny_training_run_lowers_the_loss() -> None:
    torch.manual_seed(0)
    losses = [row["loss"] for row in train_on_toy_squares(SegmentationTraining(SegmentationNet(1, SmallBackbone(width=8))))]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_segmentation_net_outputs_logits_at_input_size() -> None:
    model = SegmentationNet(3, SmallBackbone(width=8)).eval()
    assert model(torch.zeros(2, 3, 37, 50))["seg"].shape == (2, 4, 37, 50)


def test_predictions_keep_to_the_image_classes_and_mark_unsure_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6, 7)
    logits[:, 3] += 10.0  # class 2 wins everywhere unless it is excluded
    network = FixedLogits(logits).eval()
    image = torch.zeros(3, 6, 7)
    labels = predict_semantic_map(network, image, torch.tensor([0]), flip=False, min_confidence=0.0)
    assert labels.dtype == torch.uint8 and labels.shape == (6, 7)
    assert set(labels.unique().tolist()) <= {0, 1}
    np.testing.assert_array_equal(labels.numpy(), logits[0, :2].argmax(0).numpy())
    assert set(predict_semantic_map(network, image, torch.tensor([2]), flip=False,
                                    min_confidence=0.0).unique().tolist()) == {3}
    # A two-way choice is never more than 1.0 sure: everything unsure.
    unsure = predict_semantic_map(network, image, torch.tensor([0]), flip=False, min_confidence=1.0)
    assert set(unsure.unique().tolist()) <= {255, *labels[unsure != 255].unique().tolist()}
    assert (unsure == 255).sum() > 0


def test_flipped_prediction_averages_the_mirror_image() -> None:
    class Mirror(nn.Module):
        """Class 1 on the left half of whatever it is shown."""

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
            logits[:, 1, :, : images.shape[-1] // 2] = 5.0
            return {"seg": logits}

    image = torch.zeros(3, 4, 8)
    plain = predict_semantic_map(Mirror(), image, torch.tensor([0]), flip=False, min_confidence=0.0)
    assert plain[:, :4].eq(1).all() and plain[:, 4:].eq(0).all()
    # Mirrored back, the mirror image's left half is the right half: class 1 everywhere, each
    # pixel the mean of a sure (softmax of 5 against 0) and an even vote.
    sure = torch.tensor([0.0, 5.0]).softmax(0)[1].item()
    flipped = predict_semantic_map(Mirror(), image, torch.tensor([0]), flip=True, min_confidence=0.0)
    assert flipped.eq(1).all()
    confidence = (sure + 0.5) / 2
    assert predict_semantic_map(Mirror(), image, torch.tensor([0]), flip=True,
                                min_confidence=confidence - 1e-4).eq(1).all()
    assert predict_semantic_map(Mirror(), image, torch.tensor([0]), flip=True,
                                min_confidence=confidence + 1e-4).eq(255).all()


def _record(root: Path, name: str) -> ImageRecord:
    return ImageRecord(image_id=1, name=name, width=500, height=375, labels=(8, 11), points=None, has_masks=True,
                       file_name=f"{name}.jpg", path=str(root / "JPEGImages" / f"{name}.jpg"))


def test_segmentation_dataset_crops_images_and_maps_alike(tmp_path: Path, voc_fixture_root: Path) -> None:
    voc = VOCDataset(voc_fixture_root, "train")
    write_label_png(tmp_path / f"{ID}.png", voc.read_class_map(ID))
    dataset = SegmentationDataset([_record(voc_fixture_root, ID)], tmp_path, crop_size=64, scale_range=(0.1, 0.1))
    sample = dataset[(0, 7)]
    assert sample["image"].shape == (3, 64, 64) and sample["semantic"].shape == (64, 64)
    assert sample["semantic"].dtype == torch.int64
    # Scaled to 50 x 38 px, the image leaves part of the crop: padded with 255 labels.
    assert (sample["semantic"] == 255).sum() >= 64 * 64 - 50 * 38
    again = dataset[(0, 7)]
    assert torch.equal(again["image"], sample["image"]) and torch.equal(again["semantic"], sample["semantic"])
    with pytest.raises(BestieError, match="label map not found"):
        SegmentationDataset([_record(voc_fixture_root, ID)], tmp_path / "absent", crop_size=64, scale_range=(1.0, 1.0))


@pytest.fixture
def prepared(tmp_path: Path, voc_fixture_root: Path) -> Path:
    """A project with the VOC fixture prepared and a `wsss` map: its masks, the borders unsure."""
    write_params(tmp_path / "params.yaml", {"data": {"root": str(voc_fixture_root)}})
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 0, result.stderr
    truth = VOCDataset(voc_fixture_root, "train").read_class_map(ID).copy()
    truth[:40] = 255
    truth[200:260] = 0  # some wrong background
    (tmp_path / "data/wsss").mkdir()
    write_label_png(tmp_path / "data/wsss" / f"{ID}.png", truth)
    return tmp_path


def test_with_the_network_off_the_stage_passes_the_wsss_maps_through(prepared: Path) -> None:
    result = run_stage("wsss_network", prepared)
    assert result.returncode == 0, result.stderr
    assert (prepared / f"data/wsss_network/{ID}.png").read_bytes() == (prepared / f"data/wsss/{ID}.png").read_bytes()
    metrics = json.loads((prepared / "metrics/wsss_network.json").read_text())
    assert metrics["network"] == 0 and metrics["num_evaluated"] == 1
    assert metrics["miou"] == metrics["miou_wsss_input"] < 100
    assert (prepared / "metrics/wsss_network/log.tsv").read_text().splitlines() == ["step\tloss\tlr\tseconds"]


def test_with_the_network_on_the_stage_writes_its_predictions(prepared: Path, voc_fixture_root: Path) -> None:
    write_params(prepared / "params.yaml", {
        "data": {"root": str(voc_fixture_root)}, "wsss": {"network": True},
        "wsss_network": {"iterations": 2, "batch_size": 1, "crop_size": 32, "warmup_iters": 1, "log_every": 1},
    })
    result = run_stage("wsss_network", prepared, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    labels = read_label_png(prepared / f"data/wsss_network/{ID}.png")
    assert labels.shape == (375, 500)
    assert set(np.unique(labels).tolist()) <= {0, 9, 12}  # background, chair, dog: the image's classes
    metrics = json.loads((prepared / "metrics/wsss_network.json").read_text())
    assert metrics["network"] == 1 and "miou" in metrics and "miou_wsss_input" in metrics
    assert len((prepared / "metrics/wsss_network/log.tsv").read_text().splitlines()) == 3
    assert not list((prepared / "data/train_state").glob("wsss_network-*.pt"))  # a finished run leaves no state


def test_restriction_zeroes_the_other_classes_for_single_and_batched_logits() -> None:
    logits = torch.randn(2, 5, 3, 4)
    restricted = restrict_to_classes(logits, torch.tensor([1, 3]))
    probs = restricted.softmax(dim=1)
    assert probs[:, [1, 3]].eq(0).all()  # classes 0 and 2 (labels 1, 3) are not the image's
    torch.testing.assert_close(restricted[:, [0, 2, 4]], logits[:, [0, 2, 4]])
    torch.testing.assert_close(restrict_to_classes(logits[0], torch.tensor([1, 3])), restricted[0])


def test_confident_labels_mark_the_unsure_pixels() -> None:
    probs = torch.tensor([[[0.6, 0.2]], [[0.4, 0.3]], [[0.0, 0.5]]])  # [3, 1, 2]
    np.testing.assert_array_equal(confident_labels(probs, 0.0).numpy(), [[0, 2]])
    np.testing.assert_array_equal(confident_labels(probs, 0.55).numpy(), [[0, 255]])
    assert confident_labels(probs, 0.0).dtype == torch.uint8
