from __future__ import annotations

import math

import torch

from bestie.checkpoint import load_checkpoint, save_checkpoint
from bestie.classification import (
    build_classifier,
    classifier_from_checkpoint,
    train_classifier,
)
from bestie.config import ClassifierParams, to_dict


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


def test_train_classifier_runs_and_reports(tmp_path):
    torch.manual_seed(0)
    params = ClassifierParams(width=8, alpha=0.7, epochs=2, lr_steps=[1], batch_size=4, workers=0)
    model = build_classifier(2, "small", width=params.width, alpha=params.alpha)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = train_classifier(model, TinySet(8), TinySet(4), params, torch.device("cpu"), seed=0)
    assert set(metrics) == {"cls_map", "cls_f1_macro", "cls_f1_micro", "train_loss"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    path = tmp_path / "pam.pt"
    save_checkpoint(path, model.state_dict(), kind="pam", config=to_dict(params), class_names=["a", "b"])
    restored = classifier_from_checkpoint(load_checkpoint(path, kind="pam"))
    image = TinySet(1)[0][0][None]
    assert torch.allclose(restored(image)["cams"], model.eval()(image)["cams"])

    plain = classifier_from_checkpoint(load_checkpoint(path, kind="pam"), alpha=0.0)  # the wsss stage's CAMs
    assert plain.pam.alpha == 0.0 and restored.pam.alpha == params.alpha
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), restored.state_dict().values()))
