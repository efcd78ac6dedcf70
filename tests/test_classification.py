from __future__ import annotations

import copy
import math

import torch

from bestie.checkpoint import load_checkpoint, save_checkpoint
from bestie.classification import (
    build_classifier,
    classifier_from_checkpoint,
    epoch_loss,
    fit_classifier,
    predict_logits,
)
from bestie.config import ClassifierParams, to_dict
from bestie.distributed import DistContext
from bestie.metrics.classification import classification_metrics
from bestie.training import TrainState

CPU = torch.device("cpu")

class TinySet(torch.utils.data.Dataset):
    """Class 0 images are bright on the left, class 1 images bright on the right."""

    def __init__(self, count: int):
        self.labels = torch.arange(count) % 2
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = torch.zeros(3, 24, 24)
        side = slice(0, 12) if self.labels[index] == 0 else slice(12, 24)
        image[:, :, side] = 1.0
        return image, torch.nn.functional.one_hot(self.labels[index], 2).float()


def train_tiny(model, params: ClassifierParams, train_set, *, seed: int = 0, state: TrainState | None = None,
               save_state=None) -> tuple[list[dict], int]:
    """Classifier training as stages/classifier.py runs it: the log and the steps of an epoch."""
    return fit_classifier(
        model, train_set, epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
        lr_steps=params.lr_steps, optimizer=params.optimizer, weight_decay=params.weight_decay,
        pretrained=params.pretrained, seed=seed, workers=params.workers, context=DistContext(0, 1, CPU),
        state=state, save_state=save_state,
    )


def test_training_runs_and_reports(tmp_path):
    torch.manual_seed(0)
    params = ClassifierParams(width=8, alpha=0.7, epochs=2, lr_steps=[1], batch_size=4, workers=0)
    model = build_classifier(2, "small", width=params.width, alpha=params.alpha)
    before = [p.detach().clone() for p in model.parameters()]
    train_set = TinySet(9)
    history, steps = train_tiny(model, params, train_set)
    assert steps == 2 and [row["step"] for row in history] == [1, 2, 3, 4]  # the odd image out is dropped
    assert [row["lr"] for row in history] == [1e-3, 1e-3, 1e-3 * 0.1, 1e-3 * 0.1]
    assert train_set.epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    metrics = classification_metrics(*predict_logits(model, TinySet(4), CPU))
    assert all(math.isfinite(v) for v in metrics.values())

    path = tmp_path / "pam.pt"
    save_checkpoint(path, model.state_dict(), kind="pam", config=to_dict(params), class_names=["a", "b"])
    restored = classifier_from_checkpoint(load_checkpoint(path, kind="pam"))
    image = TinySet(1)[0][0][None]
    assert torch.allclose(restored(image)["cams"], model.eval()(image)["cams"])

    plain = classifier_from_checkpoint(load_checkpoint(path, kind="pam"), alpha=0.0)  # the wsss stage's CAMs
    assert plain.pam.alpha == 0.0 and restored.pam.alpha == params.alpha
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), restored.state_dict().values()))

def test_a_run_resumed_at_an_epoch_boundary_replays_the_uninterrupted_run():
    """3 epochs straight == 1 epoch, a state checkpoint, then 2 more: same batches, weights and loss."""
    params = ClassifierParams(width=8, alpha=0.0, epochs=3, lr_steps=[2], batch_size=3, workers=0, optimizer="sgd")

    def model():
        torch.manual_seed(0)
        return build_classifier(2, "small", width=params.width, alpha=params.alpha)

    saved = {}
    straight = model()
    history, steps = train_tiny(straight, params, TinySet(7), seed=2,
                                save_state=lambda state: saved.setdefault(
                                    state.iteration, copy.deepcopy((straight.state_dict(), state))))
    assert sorted(saved) == [steps, 2 * steps, 3 * steps]  # every epoch

    weights, state = saved[steps]
    torch.manual_seed(123)  # the classifier draws nothing from the global generator
    resumed = model()
    resumed.load_state_dict(weights)
    resumed_history, _ = train_tiny(resumed, params, TinySet(7), seed=2, state=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [row["loss"] for row in resumed_history] == [row["loss"] for row in history]
    assert epoch_loss([row["loss"] for row in resumed_history[-steps:]]) == epoch_loss(
        [row["loss"] for row in history[-steps:]])


def test_epoch_loss_is_the_float32_running_sum_over_the_batches():
    losses = [0.1, 0.2, 0.7, 1e-8]
    total = torch.zeros(())
    for value in losses:
        total += torch.tensor(value)  # as the device summed the batch losses
    assert epoch_loss(losses) == total.item() / 4
