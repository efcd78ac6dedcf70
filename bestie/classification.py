"""The multi-label (PAM) classifier (docs/method.md §1): building, training, evaluation.

:func:`fit_classifier` runs :func:`bestie.training.train` on :class:`ClassifierLoss`, epoch by
epoch over :func:`shuffled_loader`, the learning rate divided by 10 at given epochs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bestie.checkpoint import load_weights
from bestie.models.backbones import build_backbone
from bestie.distributed import DistContext
from bestie.models.pam import PAMClassifier, multilabel_loss
from bestie.training import LoopSettings, TrainState, build_optimizer, epoch_batches, step_lr, train

__all__ = [
    "predict_logits",
    "ClassifierLoss",
    "classifier_param_groups",
    "shuffled_loader",
    "epoch_loss",
    "fit_classifier",
    "build_classifier",
    "classifier_from_checkpoint",
]


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits and targets of every example, one image at a time at its own size.

    One at a time because global average pooling over padding would dilute the logits.

    Returns:
        logits [N, C], targets [N, C] (on the CPU).
    """
    model.eval()
    logits, targets = [], []
    for image, target in DataLoader(dataset, batch_size=1):
        logits.append(model(image.to(device))["logits"].float().cpu())
        targets.append(target)
    return torch.cat(logits), torch.cat(targets)


class ClassifierLoss(nn.Module):
    """The classifier as :func:`bestie.training.train` trains it: ``((images, labels), iteration) -> losses``."""

    def __init__(self, model: PAMClassifier):
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[Tensor, Tensor], iteration: int) -> dict[str, Tensor]:
        images, labels = batch
        return {"loss": multilabel_loss(self.model(images)["logits"], labels)}


def classifier_param_groups(model: PAMClassifier, lr: float, pretrained: bool) -> list[dict]:
    """Torch param groups: the backbone at ``lr``; the head at ``lr``, 10x with a pretrained backbone."""
    # As published, layers trained from scratch learn 10x faster than ImageNet-initialised ones.
    groups = model.param_groups()
    head_lr = lr * (10 if pretrained else 1)
    return [{"params": groups["backbone"], "lr": lr}, {"params": groups["head"], "lr": head_lr}]


def shuffled_loader(train_set: Dataset, batch_size: int, workers: int, seed: int, device: torch.device) -> DataLoader:
    """The classifier's training batches, reshuffled every epoch by ``loader.generator`` (seeded with ``seed``).

    ``train_set`` yields (image [3, h, w], labels [C]) of one crop size; see
    :func:`bestie.training.epoch_batches` for going through its epochs.
    """
    return DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=len(train_set) > batch_size,  # no BatchNorm step on a tiny last batch
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )


def epoch_loss(losses: list[float]) -> float:
    """The mean of one epoch's batch losses, summed in float32 in batch order (as on the device)."""
    total = torch.zeros(())
    for loss in losses:
        total += loss
    return total.item() / len(losses)


def fit_classifier(
    model: PAMClassifier,
    train_set: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_steps: Sequence[int],
    optimizer: str,
    weight_decay: float,
    pretrained: bool,
    seed: int,
    workers: int,
    context: DistContext,
    state: TrainState | None = None,
    save_state: Callable[[TrainState], None] | None = None,
) -> tuple[list[dict], int]:
    """Train the classifier epoch by epoch; resumable at epoch boundaries (``state.iteration``).

    The learning rate is divided by 10 at each epoch of ``lr_steps``; the state is saved after
    every epoch, where the shuffling generator's state is part of it.

    Returns:
        the training log (one row per iteration) and the iterations of an epoch.
    """
    state = state or TrainState()
    loader = shuffled_loader(train_set, batch_size, workers, seed, context.device)
    steps = len(loader)  # an epoch
    history = train(
        ClassifierLoss(model),
        epoch_batches(loader, epochs, state.iteration // steps),
        build_optimizer(optimizer, classifier_param_groups(model, lr, pretrained), lr, weight_decay),
        partial(step_lr, milestones=[epoch * steps for epoch in lr_steps]),
        LoopSettings(epochs * steps, log_every=1, checkpoint_every=steps, name="classifier"),
        context, state=state, save_state=save_state, shuffle=loader.generator,
    )
    return history, steps


def build_classifier(
    num_classes: int, backbone: str, width: int, alpha: float, pretrained: bool = False
) -> PAMClassifier:
    """The PAM classifier the ``classifier`` params describe (``width``: small backbone only)."""
    return PAMClassifier(
        num_classes,
        build_backbone(backbone, pretrained, width),
        alpha=alpha,
    )


def classifier_from_checkpoint(
    checkpoint: dict, source: str | os.PathLike = "the pam checkpoint", alpha: float | None = None
) -> PAMClassifier:
    """Rebuild the classifier a ``pam`` checkpoint holds, in eval mode.

    ``checkpoint`` is what :func:`bestie.checkpoint.load_checkpoint` returns; its config
    is the ``classifier`` params it was trained with. ``source`` (its path) names it if
    its weights do not fit that classifier. ``alpha``, if given, replaces the trained PAM
    threshold (Peak Attention has no weights, so the same weights load at any alpha).
    """
    config = checkpoint["config"]
    model = build_classifier(
        len(checkpoint["class_names"]), config["backbone"], config["width"],
        config["alpha"] if alpha is None else alpha,
    )
    load_weights(model, checkpoint["model"], source=source)
    return model.eval()
