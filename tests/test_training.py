"""The training loop's rules: schedule, sampling plan, losses, refinement switch, exact resume."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bestie.config import TrainParams
from bestie.data.instance_dataset import collate_samples
from bestie.distributed import DistContext
from bestie.engine import IterationBatches, TrainState, compute_losses, poly_lr, train_bestie
from bestie.losses import hard_pixel_cross_entropy, weighted_l1, weighted_mse
from bestie.models import BestieNet, SmallBackbone

from .fake_data import NUM_CLASSES, FakeBestieData

CPU = DistContext(0, 1, torch.device("cpu"))
TINY = TrainParams(iterations=4, batch_size=2, crop_size=32, warmup_iters=1, workers=0,
                   checkpoint_every=2, log_every=1, lr=1e-3)


def tiny_model() -> BestieNet:
    torch.manual_seed(0)
    return BestieNet(NUM_CLASSES, SmallBackbone(width=8))


# -- schedule and sampling -----------------------------------------------------------------


def test_poly_lr_warms_up_then_decays_to_zero() -> None:
    assert poly_lr(1.0, 0, 100, 10, 0.9) == pytest.approx(0.1)
    assert poly_lr(1.0, 9, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(1.0, 10, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(1.0, 55, 100, 10, 0.9) == pytest.approx(0.5**0.9)
    assert poly_lr(1.0, 100, 100, 10, 0.9) == pytest.approx(0.0)
    assert poly_lr(2.0, 0, 100, 0, 0.9) == pytest.approx(2.0)  # no warm-up


def test_iteration_batches_cover_each_epoch_once_and_are_disjoint_across_ranks() -> None:
    ranks = [IterationBatches(12, 2, 0, 6, seed=7, rank=r, world_size=2) for r in range(2)]
    for epoch in range(2):  # 3 iterations x 2 ranks x 2 samples = one epoch of 12
        seen = [i for t in range(3 * epoch, 3 * epoch + 3) for sampler in ranks for i, _ in sampler.batch(t)]
        assert sorted(seen) == list(range(12))
    seeds = [seed for t in range(6) for sampler in ranks for _, seed in sampler.batch(t)]
    assert len(set(seeds)) == len(seeds)  # every sample draws its own augmentation


def test_iteration_batches_do_not_depend_on_where_they_start() -> None:
    full = list(IterationBatches(7, 3, 0, 6, seed=1))
    resumed = list(IterationBatches(7, 3, 4, 6, seed=1))
    assert resumed == full[4:]
    assert list(IterationBatches(7, 3, 0, 6, seed=2)) != full


# -- losses --------------------------------------------------------------------------------


def test_hard_pixel_cross_entropy_keeps_the_hardest_share() -> None:
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 0.0, -4.0, 9.0])  # target 0 everywhere
    target = torch.tensor([[[0, 0, 0, 255]]])
    losses = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[0, 0, :3]
    assert hard_pixel_cross_entropy(logits, target, 1.0) == pytest.approx(losses.mean())
    assert hard_pixel_cross_entropy(logits, target, 0.34) == pytest.approx(losses.max())
    empty = hard_pixel_cross_entropy(logits.requires_grad_(), torch.full_like(target, 255))
    assert empty.item() == 0.0 and empty.requires_grad


def test_weighted_losses_count_only_weighted_pixels() -> None:
    prediction = torch.zeros(1, 2, 2, 2)
    target = torch.ones(1, 2, 2, 2)
    weight = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert weighted_mse(prediction, target, weight) == pytest.approx(2.0)  # 2 channels x 1^2
    assert weighted_l1(prediction, 3 * target, weight) == pytest.approx(6.0)
    assert weighted_l1(prediction, target, torch.zeros_like(weight)) == 0.0


def test_refined_terms_are_averaged_with_pseudo_label_terms() -> None:
    batch = collate_samples([FakeBestieData()[(0, 0)]])
    outputs = {"seg": torch.zeros(1, 3, 32, 32), "center": torch.zeros(1, 2, 32, 32),
               "offset": torch.zeros(1, 2, 32, 32)}
    plain = compute_losses(outputs, batch, None, TINY)
    # Refined labels equal to the pseudo labels, counted on the same pixels: the same term.
    same = compute_losses(outputs, batch, {"center": batch["center"], "weight": batch["center_weight"],
                                           "offset": batch["offset"]}, TINY)
    assert same["center"] == pytest.approx(plain["center"])
    zero = {"center": torch.zeros_like(batch["center"]), "offset": torch.zeros_like(batch["offset"]),
            "weight": batch["weight"]}
    halved = compute_losses(outputs, batch, zero, TINY)  # prediction == refined target: term 0
    assert halved["center"] == pytest.approx(plain["center"] / 2)
    assert halved["offset"] == pytest.approx(plain["offset"] / 2)
    points_only = compute_losses(outputs, batch, {"offset": zero["offset"], "weight": zero["weight"]}, TINY)
    assert points_only["center"] == pytest.approx(plain["center"])


# -- the loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("supervision", ["cls", "point", "full"])
def test_training_runs_and_logs_for_every_supervision(supervision: str) -> None:
    logged = []
    train_bestie(tiny_model(), FakeBestieData(supervision=supervision), collate_samples, TINY,
                 supervision, NUM_CLASSES, CPU, seed=0, log=lambda step, s: logged.append((step, s)))
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for _, s in logged)
    refined = [s["refine_ms"] > 0 for _, s in logged]
    assert all(refined) if supervision != "full" else not any(refined)


def test_refinement_switch_and_start_iteration() -> None:
    logged = []
    params = dataclasses.replace(TINY, refine_iter=2)
    train_bestie(tiny_model(), FakeBestieData(), collate_samples, params, "cls", NUM_CLASSES, CPU,
                 seed=0, log=lambda step, s: logged.append(s["refine_ms"] > 0))
    assert logged == [False, False, True, True]
    logged.clear()
    train_bestie(tiny_model(), FakeBestieData(), collate_samples, dataclasses.replace(TINY, refine=False),
                 "cls", NUM_CLASSES, CPU, seed=0, log=lambda step, s: logged.append(s["refine_ms"] > 0))
    assert logged == [False] * 4


def test_resumed_training_reaches_the_same_weights() -> None:
    straight = train_bestie(tiny_model(), FakeBestieData(), collate_samples, TINY, "cls", NUM_CLASSES, CPU, seed=3)

    saved = {}

    def save_state(network, state: TrainState) -> None:
        # What save_checkpoint does: a snapshot, not live references the next step mutates.
        saved[state.iteration] = copy.deepcopy((network.state_dict(), state))

    train_bestie(tiny_model(), FakeBestieData(), collate_samples, TINY, "cls", NUM_CLASSES, CPU,
                 seed=3, save_state=save_state)
    weights, state = saved[2]  # as if the run had been killed after iteration 2
    model = tiny_model()
    model.load_state_dict(weights)
    resumed = train_bestie(model, FakeBestieData(), collate_samples, TINY, "cls", NUM_CLASSES, CPU,
                           seed=3, state=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
