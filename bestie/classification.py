"""Training and evaluation of the multi-label (PAM) classifier (docs/method.md §1)."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bestie.checkpoint import load_weights
from bestie.config import ClassifierParams
from bestie.metrics.classification import classification_metrics
from bestie.models.backbones import build_backbone
from bestie.models.pam import PAMClassifier, multilabel_loss

__all__ = [
    "predict_logits",
    "train_classifier",
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


def _optimizer(model: nn.Module, params: ClassifierParams) -> torch.optim.Optimizer:
    # As published, layers trained from scratch learn 10x faster than ImageNet-initialised ones.
    groups = model.param_groups()
    head_lr = params.lr * (10 if params.pretrained else 1)
    param_groups = [{"params": groups["backbone"], "lr": params.lr}, {"params": groups["head"], "lr": head_lr}]
    if params.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(param_groups, lr=params.lr, momentum=0.9, weight_decay=params.weight_decay)


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    params: ClassifierParams,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Train ``model`` (a :class:`~bestie.models.PAMClassifier`) on image-level labels.

    ``params.epochs`` epochs of the multi-label soft-margin loss; the learning rate drops
    tenfold at each epoch in ``params.lr_steps``. The model is evaluated once, after the
    last epoch, on ``val_set`` (no model selection on the evaluation split).

    Args:
        train_set: yields (image [3, h, w], labels [C]) of one crop size; must have ``set_epoch``.
        val_set: yields (image [3, H, W], labels [C]) at any size.
        seed: seeds the shuffling order.
    Returns:
        ``cls_map``, ``cls_f1_macro``, ``cls_f1_micro`` on val (percent) and the last
        epoch's mean ``train_loss``.
    """
    model.to(device)
    optimizer = _optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=params.lr_steps, gamma=0.1)
    loader = DataLoader(
        train_set,
        batch_size=params.batch_size,
        shuffle=True,
        num_workers=params.workers,
        drop_last=len(train_set) > params.batch_size,  # no BatchNorm step on a tiny last batch
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )
    progress = tqdm(total=params.epochs * len(loader), desc="classifier", unit="batch", disable=None)
    for epoch in range(params.epochs):
        train_set.set_epoch(epoch)
        model.train()
        total_loss = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = multilabel_loss(model(images)["logits"], labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach()
            progress.update()
        scheduler.step()
        train_loss = total_loss.item() / len(loader)
        progress.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.4f}")
    progress.close()

    logits, targets = predict_logits(model, val_set, device)
    return {**classification_metrics(logits, targets), "train_loss": train_loss}


def build_classifier(
    num_classes: int, backbone: str, width: int, alpha: float, pretrained: bool = False
) -> PAMClassifier:
    """The PAM classifier the ``classifier`` params describe (``width``: small backbone only)."""
    options = {"width": width} if backbone == "small" else {}
    return PAMClassifier(
        num_classes,
        build_backbone(backbone, pretrained, pretrained_key="classifier.pretrained", **options),
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
