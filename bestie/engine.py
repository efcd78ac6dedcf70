"""Training the BESTIE network with online self-refinement (METHOD.md §4-§6).

One plain loop, readable top to bottom: sample a batch, forward, refine the pseudo labels
from the network's own detached outputs, three weighted losses, step, log, checkpoint.

Reproducible and resumable by construction: the batch of iteration t (its images, their
augmentation and the dropout masks) is a pure function of (seed, t, rank), and a state checkpoint holds
model, optimiser, scaler and t. A run resumed from iteration k therefore replays exactly
what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from bestie.config import TrainParams
from bestie.distributed import DistContext, all_reduce_mean
from bestie.losses import hard_pixel_cross_entropy, weighted_l1, weighted_mse
from bestie.refine import refine_image_level, refine_point_level
from bestie.runtime import autocast

__all__ = ["IterationBatches", "poly_lr", "compute_losses", "self_refine", "train_bestie", "TrainState"]


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


def poly_lr(base_lr: float, iteration: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up over ``warmup`` iterations, then poly decay to 0 at ``total``."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return base_lr * (1.0 - progress) ** power


def compute_losses(outputs: dict, batch: dict, refined: dict | None, params: TrainParams) -> dict:
    """The weighted BESTIE losses of one batch (METHOD.md §5).

    With refined labels, a center/offset term is the mean of its pseudo-label term and its
    refined-label term; point supervision refines only the offset (``refined`` then has no
    ``"center"``).

    Returns:
        {"loss": total, "seg": ..., "center": ..., "offset": ...} scalars.
    """
    seg = hard_pixel_cross_entropy(outputs["seg"], batch["semantic"], params.hard_pixel_ratio)
    center = weighted_mse(outputs["center"], batch["center"], batch["center_weight"])
    offset = weighted_l1(outputs["offset"], batch["offset"], batch["weight"])
    if refined is not None:
        if "center" in refined:
            center = 0.5 * (center + weighted_mse(outputs["center"], refined["center"], refined["weight"]))
        offset = 0.5 * (offset + weighted_l1(outputs["offset"], refined["offset"], refined["weight"]))
    total = params.seg_weight * seg + params.center_weight * center + params.offset_weight * offset
    return {"loss": total, "seg": seg, "center": center, "offset": offset}


@torch.no_grad()
def self_refine(outputs: dict, batch: dict, supervision: str, num_classes: int, params: TrainParams) -> dict | None:
    """Refined labels from the network's own detached outputs, or None for ``full``."""
    if supervision == "cls":
        return refine_image_level(
            outputs["center"].detach().float(),
            outputs["offset"].detach().float(),
            outputs["seg"].detach().float().softmax(dim=1),
            batch["component_map"],
            batch["component_class"],
            num_classes,
            threshold=params.refine_thresh,
            nms_kernel=params.refine_nms_kernel,
            max_instances=params.refine_max_instances,
            sigma=params.sigma,
        )
    if supervision == "point":
        return refine_point_level(
            outputs["offset"].detach().float(),
            batch["semantic"],
            batch["points"],
            batch["point_classes"],
            num_classes,
        )
    return None


@dataclass
class TrainState:
    """What a resumable checkpoint restores."""

    iteration: int = 0
    optimizer: dict | None = None
    scaler: dict | None = None


def train_bestie(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    collate: Callable,
    params: TrainParams,
    supervision: str,
    num_classes: int,
    context: DistContext,
    *,
    seed: int,
    model_state: dict | None = None,
    state: TrainState | None = None,
    save_state: Callable[[nn.Module, TrainState], None] | None = None,
    log: Callable[[int, dict], None] | None = None,
) -> nn.Module:
    """Train ``model`` for ``params.iterations`` iterations and return it (unwrapped).

    Args:
        model: a BestieNet on ``context.device`` (wrapped in DDP here when distributed).
        dataset, collate: the training samples (``(index, seed)`` keyed) and their collate fn.
        supervision: "cls", "point" or "full" (which self-refinement applies).
        state: where to resume from (``None``: from scratch).
        save_state: called on the main process every ``checkpoint_every`` iterations and at
            the end, with the unwrapped model and the state to resume from.
        log: called on the main process every ``log_every`` iterations with named scalars.
    """
    device = context.device
    state = state or TrainState()
    use_amp = params.amp and device.type == "cuda"
    if context.distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    network = model.module if context.distributed else model

    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.scaler is not None:
        scaler.load_state_dict(state.scaler)

    if params.batch_size % context.world_size:
        raise ValueError(f"train.batch_size {params.batch_size} must divide by {context.world_size} processes")
    batches = IterationBatches(
        len(dataset), params.batch_size // context.world_size, state.iteration, params.iterations,
        seed, context.rank, context.world_size,
    )
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=params.workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    model.train()
    # A bar with an ETA on the main process (None: only when attached to a terminal).
    progress = tqdm(total=params.iterations, initial=state.iteration, desc="train",
                    disable=None if context.is_main else True, dynamic_ncols=True)
    refine_from = params.refine_iter if params.refine else math.inf
    started = time.perf_counter()
    for iteration, batch in enumerate(loader, start=state.iteration):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        # Dropout draws from the global generator: seed it per iteration so a resumed run replays it.
        torch.manual_seed(int(np.random.default_rng([seed, iteration, context.rank]).integers(2**62)))
        lr = poly_lr(params.lr, iteration, params.iterations, params.warmup_iters, params.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast(device, use_amp):
            outputs = model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items()}
        refine_ms = 0.0
        refined = None
        if iteration >= refine_from and supervision != "full":
            tic = time.perf_counter()
            refined = self_refine(outputs, batch, supervision, num_classes, params)
            refine_ms = 1000 * (time.perf_counter() - tic)
        losses = compute_losses(outputs, batch, refined, params)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        progress.update(1)

        done = iteration + 1
        if log is not None and (done % params.log_every == 0 or done == params.iterations):
            scalars = {k: all_reduce_mean(v.detach(), context).item() for k, v in losses.items()}
            if context.is_main:
                progress.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{lr:.2e}")
                log(done, {**scalars, "lr": lr, "refine_ms": refine_ms,
                           "seconds": time.perf_counter() - started})
        if save_state is not None and context.is_main and (
            done % params.checkpoint_every == 0 or done == params.iterations
        ):
            save_state(network, TrainState(done, optimizer.state_dict(), scaler.state_dict()))
    progress.close()
    return network
