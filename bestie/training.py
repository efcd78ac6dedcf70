"""One training loop for BESTIE (docs/method.md §4-§6), the PAM classifier (§1) and Mask R-CNN (§8).

Readable top to bottom in :func:`train`: take batch t, reseed, set the learning rate, forward
(the model returns its losses), step, log, checkpoint. What differs between the networks is
built by the caller: the model (a module whose ``forward(batch, iteration)`` returns
``{"loss": what is minimised, **named scalars to log}``), its batches, the optimizer
(:func:`build_optimizer`), the schedule (:func:`poly_lr`, :func:`step_lr`) and the
:class:`LoopSettings`.

Reproducible and resumable by construction. Iteration-keyed batches (:func:`iteration_batches`):
batch t (its images and their augmentation) is a pure function of (seed, t, rank), and the
global generator (dropout, RPN sampling) is reseeded every iteration. Epoch-wise shuffled
batches (:func:`epoch_batches`): the loader's own generator is saved with the state at epoch
boundaries. A state checkpoint (:class:`TrainState`) holds the rest. A run resumed from
iteration k therefore replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from bestie.checkpoint import load_weights, save_checkpoint
from bestie.distributed import DistContext, all_reduce_mean
from bestie.errors import BestieError
from bestie.fingerprint import RunState
from bestie.runtime import autocast

__all__ = [
    "IterationBatches", "iteration_batches", "epoch_batches", "poly_lr", "step_lr", "build_optimizer",
    "TrainState", "load_train_state", "state_saver", "device_layout", "LoopSettings", "train",
]


class IterationBatches(Sampler):
    """Batches of ``(dataset index, augmentation seed)`` for iterations [start, stop).

    Global sample position p = t * global_batch + rank * local_batch + j walks through one
    seeded permutation of the dataset per epoch, so the processes of a run see disjoint
    samples, every epoch covers the data once, and iteration t is the same whenever it runs.
    """

    def __init__(self, dataset_size: int, local_batch: int, start: int, stop: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        self.dataset_size = dataset_size
        self.local_batch = local_batch
        self.start, self.stop = start, stop
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)}
        return self._permutations[epoch]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        global_batch = self.local_batch * self.world_size
        first = iteration * global_batch + self.rank * self.local_batch
        batch = []
        for position in range(first, first + self.local_batch):
            epoch, offset = divmod(position, self.dataset_size)
            sample_seed = int(np.random.default_rng([self.seed, position]).integers(2**31))
            batch.append((int(self._permutation(epoch)[offset]), sample_seed))
        return batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def iteration_batches(
    dataset: Dataset, collate: Callable, local_batch: int, start: int, stop: int, seed: int,
    context: DistContext, workers: int,
) -> Iterator[tuple[int, Any]]:
    """``(iteration, batch)`` for iterations [start, stop): this process's ``local_batch``
    samples of :class:`IterationBatches`, keyed ``(index, seed)``, loaded by ``workers`` processes."""
    sampler = IterationBatches(len(dataset), local_batch, start, stop, seed, context.rank, context.world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        pin_memory=context.device.type == "cuda")
    return enumerate(loader, start=start)


def epoch_batches(loader: DataLoader, epochs: int, start_epoch: int = 0) -> Iterator[tuple[int, Any]]:
    """``(iteration, batch)`` of a shuffling loader, epoch after epoch from ``start_epoch``.

    The loader's dataset is told the epoch (``set_epoch``) before each pass. Each batch is
    fetched before the previous one is yielded, so when an epoch's last batch is trained on,
    the loader has finished the epoch: its generator (``loader.generator``) then holds the next
    epoch's state, and a state saved at that epoch boundary resumes there exactly.
    """
    steps = len(loader)
    for epoch in range(start_epoch, epochs):
        loader.dataset.set_epoch(epoch)
        batches = iter(loader)
        batch = next(batches)
        for step in range(steps):
            following = next(batches, None)
            yield epoch * steps + step, batch
            batch = following


def poly_lr(base_lr: float, iteration: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up over ``warmup`` iterations, then poly decay to 0 at ``total``."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return base_lr * (1.0 - progress) ** power


def step_lr(base_lr: float, iteration: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """``base_lr`` times ``gamma`` for every milestone (an iteration) reached.

    The factors are applied one after the other, as ``torch.optim.lr_scheduler.MultiStepLR``
    applies them, so the rates are the same floats.
    """
    lr = base_lr
    for milestone in milestones:
        if iteration >= milestone:
            lr = lr * gamma
    return lr


def build_optimizer(name: str, parameters: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` or ``sgd`` (momentum 0.9) over ``parameters``.

    ``parameters``: a module's parameters, of which frozen ones (``requires_grad`` false, e.g.
    pretrained layers torchvision freezes) are left out; or torch param groups (dicts), taken
    as they are, a group's own ``"lr"`` replacing ``lr``.
    """
    parameters = list(parameters)
    if not any(isinstance(p, dict) for p in parameters):
        parameters = [p for p in parameters if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw or sgd)")


@dataclass
class TrainState:
    """What a state checkpoint holds besides the weights: where a run is, and how to go on exactly."""

    iteration: int = 0  # iterations done
    optimizer: dict | None = None
    scaler: dict | None = None
    shuffle: torch.Tensor | None = None  # the shuffling generator's state (epoch-wise batches only)
    history: list[dict] = field(default_factory=list)  # the rows logged so far


def load_train_state(run: RunState, model: nn.Module) -> TrainState:
    """Where ``run`` continues: its saved state, the weights loaded into ``model``; or the start."""
    if run.saved is None:
        return TrainState()
    load_weights(model, run.saved["model"], source=run.path)
    return TrainState(**run.saved["extra"])


def state_saver(
    path: str | os.PathLike, model: nn.Module, *, kind: str, config: dict, class_names: Sequence[str]
) -> Callable[[TrainState], None]:
    """``save_state`` for :func:`train`: ``model``'s weights and the state, a ``kind`` checkpoint at ``path``."""
    def save(state: TrainState) -> None:
        save_checkpoint(path, model.state_dict(), kind=kind, config=config, class_names=class_names,
                        extra=vars(state))
    return save


def _to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a (nested dict, list or tuple) batch, on ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def device_layout(model: nn.Module, context: DistContext, channels_last: bool) -> nn.Module:
    """``model`` laid out for ``context``'s device: BatchNorm synchronised across processes when
    distributed on CUDA (statistics of the global batch, as published; SyncBatchNorm has no CPU
    implementation), and channels-last (NHWC) weights on CUDA when asked, which every
    convolution then follows. Parameters stay the same objects, so an optimizer built on them
    still holds them. Only modules change: no GPU is needed to build this layout.
    """
    if context.distributed and context.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last and context.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train` runs, apart from what it trains."""

    iterations: int  # of the whole run, also when resumed
    log_every: int
    checkpoint_every: int
    seed: int | None = None  # reseed the global generator every iteration from (seed, t, rank); None: don't
    amp: bool = False  # float16 autocast of the forward and a gradient scaler (CUDA only)
    channels_last: bool = False  # NHWC weights, so cuDNN picks its tensor-core convolutions (CUDA only)
    lr_key: str | None = None  # a non-finite loss is an error naming this param; None: no check
    name: str = "train"  # of the progress bar


def train(
    model: nn.Module,
    batches: Iterable[tuple[int, Any]],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[float, int], float],
    settings: LoopSettings,
    context: DistContext,
    *,
    state: TrainState | None = None,
    save_state: Callable[[TrainState], None] | None = None,
    shuffle: torch.Generator | None = None,
) -> list[dict]:
    """Train ``model`` in place up to ``settings.iterations`` and return the logged rows.

    Args:
        model: on ``context.device``; ``forward(batch, iteration)`` returns ``{"loss": ...,
            **scalars}``. Tensors are logged as their mean over processes, plain numbers (a
            timing) as they are. Laid out for the device here (:func:`device_layout`), and
            wrapped in DDP when distributed.
        batches: ``(iteration, batch)`` from ``state.iteration`` on, drawn lazily (after the
            state is restored); the batch is moved to the device here.
        optimizer: over ``model``'s parameters; each group's lr at iteration t is
            ``lr_at(the group's lr as built, t)``.
        state: where to resume from (``None``: from scratch); its weights are already in ``model``.
        save_state: called on the main process every ``checkpoint_every`` iterations and at the end.
        shuffle: the generator ``batches`` shuffle with, if any: saved with the state, restored from it.
    Returns:
        rows ``{"step", **scalars, "lr", "seconds"}`` every ``log_every`` iterations and at the
        end, those of ``state`` first (on the main process; the others log nothing).
    """
    device = context.device
    state = state or TrainState()
    use_amp = settings.amp and device.type == "cuda"
    model = device_layout(model, context, settings.channels_last)
    if context.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a saved state overwrites them
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    if state.shuffle is not None:
        shuffle.set_state(state.shuffle)
    history = list(state.history)

    model.train()
    # A bar with an ETA on the main process (None: only when attached to a terminal).
    progress = tqdm(total=settings.iterations, initial=state.iteration, desc=settings.name,
                    disable=None if context.is_main else True, dynamic_ncols=True)
    started = time.perf_counter()
    for iteration, batch in batches:
        batch = _to_device(batch, device)
        if settings.seed is not None:
            # Dropout and sampling draw from the global generator: seed it per iteration so a resumed
            # run replays them. (numpy reads missing seed words as 0: rank 0 seeds as (seed, t) did.)
            rng = np.random.default_rng([settings.seed, iteration, context.rank])
            torch.manual_seed(int(rng.integers(2**62)))
        lrs = [lr_at(base_lr, iteration) for base_lr in base_lrs]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr

        with autocast(device, use_amp):
            losses = model(batch, iteration)
        loss = losses["loss"]
        if settings.lr_key is not None and not torch.isfinite(loss):
            raise BestieError(
                f"{settings.lr_key}: the loss diverged ({loss.item()}) at iteration {iteration}; lower it"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        progress.update(1)

        done = iteration + 1
        if done % settings.log_every == 0 or done == settings.iterations:
            scalars = {k: all_reduce_mean(v.detach(), context).item() if torch.is_tensor(v) else v
                       for k, v in losses.items()}
            if context.is_main:
                progress.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{lrs[0]:.2e}")
                history.append({"step": done, **scalars, "lr": lrs[0], "seconds": time.perf_counter() - started})
        if save_state is not None and context.is_main and (
            done % settings.checkpoint_every == 0 or done == settings.iterations
        ):
            save_state(TrainState(done, optimizer.state_dict(), scaler.state_dict(),
                                  None if shuffle is None else shuffle.get_state(), list(history)))
    progress.close()
    return history
