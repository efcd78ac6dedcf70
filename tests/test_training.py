"""The training loop's rules: schedules, sampling plans, losses, refinement switch, exact resume."""

from __future__ import annotations

import copy
import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bestie.config import PairwiseParams, SegRefineParams, TrainParams, to_dict
from bestie.data.instance_dataset import collate_samples
from bestie.distributed import DistContext
from bestie.errors import BestieError
from bestie.fingerprint import find_run_state
from bestie.edge_refine import neighbour_offsets
from bestie.losses import (
    BestieCriterion, BestieTraining, compute_losses, hard_pixel_cross_entropy, pairwise_affinity,
    pairwise_affinity_loss, unsure_pixels, weighted_l1, weighted_mse,
)
from bestie.models import BestieNet, SmallBackbone
from bestie.structures import IGNORE
from bestie.training import (
    IterationBatches, LoopSettings, TrainState, build_optimizer, device_layout, epoch_batches, iteration_batches,
    load_train_state, poly_lr, state_saver, step_lr, train,
)

from .fake_data import NUM_CLASSES, FakeBestieData

CPU = DistContext(0, 1, torch.device("cpu"))
TINY = TrainParams(iterations=4, batch_size=2, crop_size=32, warmup_iters=1, workers=0,
                   checkpoint_every=2, log_every=1, lr=1e-3)
WEIGHTS = dict(seg_weight=TINY.seg_weight, center_weight=TINY.center_weight, offset_weight=TINY.offset_weight,
               hard_pixel_ratio=TINY.hard_pixel_ratio)


def tiny_model() -> BestieNet:
    torch.manual_seed(0)
    return BestieNet(NUM_CLASSES, SmallBackbone(width=8))


def train_tiny(model: BestieNet, supervision: str = "cls", params: TrainParams = TINY, *, seed: int = 0,
               context: DistContext = CPU, state: TrainState | None = None, save_state=None) -> list[dict]:
    """BESTIE training on the fake data, built as stages/train.py builds it."""
    state = state or TrainState()
    criterion = BestieCriterion(
        supervision, NUM_CLASSES, **WEIGHTS, refine_from=params.refine_iter if params.refine else None,
        refine_thresh=params.refine_thresh, refine_nms_kernel=params.refine_nms_kernel,
        refine_max_instances=params.refine_max_instances, sigma=params.sigma,
        seg_refine=to_dict(params.seg_self_refine) if params.seg_self_refine.iterations else None,
        seg_refine_from=params.seg_self_refine_iter,
        pairwise=to_dict(params.pairwise) if params.pairwise.weight else None,
        late_hard_pixel_ratio=params.late_hard_pixel_ratio, late_hard_pixel_iter=params.late_hard_pixel_iter,
    )
    return train(
        BestieTraining(model, criterion),
        iteration_batches(FakeBestieData(supervision=supervision), collate_samples,
                          params.batch_size // context.world_size, state.iteration, params.iterations, seed,
                          context, params.workers),
        build_optimizer("adam", model.parameters(), params.lr, params.weight_decay),
        partial(poly_lr, total=params.iterations, warmup=params.warmup_iters, power=params.poly_power),
        LoopSettings(params.iterations, params.log_every, params.checkpoint_every, seed=seed, amp=params.amp,
                     channels_last=params.channels_last),
        context, state=state, save_state=save_state,
    )


# -- schedule and sampling -----------------------------------------------------------------


def test_poly_lr_warms_up_then_decays_to_zero() -> None:
    assert poly_lr(1.0, 0, 100, 10, 0.9) == pytest.approx(0.1)
    assert poly_lr(1.0, 9, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(1.0, 10, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(1.0, 55, 100, 10, 0.9) == pytest.approx(0.5**0.9)
    assert poly_lr(1.0, 100, 100, 10, 0.9) == pytest.approx(0.0)
    assert poly_lr(2.0, 0, 100, 0, 0.9) == pytest.approx(2.0)  # no warm-up


def test_step_lr_gives_multisteplr_rates_to_the_bit() -> None:
    """The classifier's schedule was MultiStepLR stepped every epoch; per iteration it is the same floats."""
    steps_per_epoch, milestones = 3, [2, 4, 5]
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 7e-3}])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    for epoch in range(7):
        for step in range(steps_per_epoch):
            iteration = epoch * steps_per_epoch + step
            ours = [step_lr(base, iteration, [m * steps_per_epoch for m in milestones]) for base in (1e-3, 7e-3)]
            assert ours == [group["lr"] for group in optimizer.param_groups]  # exact, not approx
        optimizer.step()
        scheduler.step()


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


def test_epoch_batches_finish_each_epoch_before_its_last_batch() -> None:
    """A generator state taken at an epoch's last batch starts the next epoch exactly."""

    class Numbers(torch.utils.data.Dataset):
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return 7

        def __getitem__(self, index):
            return index

    def loader(dataset):
        return torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(4))

    straight, states = loader(Numbers()), {}
    seen = []
    for iteration, batch in epoch_batches(straight, 3):
        seen.append((iteration, batch.tolist()))
        if (iteration + 1) % 3 == 0:
            states[iteration + 1] = straight.generator.get_state()
    assert [t for t, _ in seen] == list(range(9)) and straight.dataset.epochs == [0, 1, 2]
    resumed = loader(Numbers())
    resumed.generator.set_state(states[3])
    assert [(t, b.tolist()) for t, b in epoch_batches(resumed, 3, start_epoch=1)] == seen[3:]
    assert resumed.dataset.epochs == [1, 2]


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
    plain = compute_losses(outputs, batch, None, **WEIGHTS)
    # Refined labels equal to the pseudo labels, counted on the same pixels: the same term.
    same = compute_losses(outputs, batch, {"center": batch["center"], "weight": batch["center_weight"],
                                           "offset": batch["offset"]}, **WEIGHTS)
    assert same["center"] == pytest.approx(plain["center"])
    zero = {"center": torch.zeros_like(batch["center"]), "offset": torch.zeros_like(batch["offset"]),
            "weight": batch["weight"]}
    halved = compute_losses(outputs, batch, zero, **WEIGHTS)  # prediction == refined target: term 0
    assert halved["center"] == pytest.approx(plain["center"] / 2)
    assert halved["offset"] == pytest.approx(plain["offset"] / 2)
    points_only = compute_losses(outputs, batch, {"offset": zero["offset"], "weight": zero["weight"]}, **WEIGHTS)
    assert points_only["center"] == pytest.approx(plain["center"])
    # A refined semantic target the prediction gets right: the segmentation term halves.
    outputs["seg"][:, 0] = 50.0  # certain background
    seg_plain = compute_losses(outputs, batch, None, **WEIGHTS)["seg"]
    assert seg_plain > 1.0
    refined_seg = compute_losses(outputs, batch, {**zero, "semantic": torch.zeros_like(batch["semantic"])}, **WEIGHTS)
    assert refined_seg["seg"] == pytest.approx(seg_plain / 2)


def two_region_image(height: int = 12, width: int = 16, edge: int = 8) -> torch.Tensor:
    """[1, 3, H, W]: dark left of column ``edge``, bright from it on, with a little noise."""
    torch.manual_seed(0)
    image = torch.full((1, 3, height, width), -1.0)
    image[..., edge:] = 1.0
    return image + 0.05 * torch.randn_like(image)


def labelling_logits(height: int, width: int, boundary: int) -> torch.Tensor:
    """[1, 2, H, W] confident logits: class 0 left of column ``boundary``, class 1 from it on."""
    logits = torch.full((1, 2, height, width), -6.0)
    logits[0, 0, :, :boundary] = 6.0
    logits[0, 1, :, boundary:] = 6.0
    return logits


def test_pairwise_loss_is_lowest_when_the_label_changes_at_the_image_edge() -> None:
    image, dilations = two_region_image(), [1, 2]
    affinity = pairwise_affinity(image, texture_window=1, stride=1, dilations=dilations)
    loss = {boundary: pairwise_affinity_loss(labelling_logits(12, 16, boundary), affinity, stride=1,
                                             dilations=dilations).item()
            for boundary in (0, 4, 8, 12)}
    assert loss[0] < 0.01  # one confident label everywhere: every pair agrees
    assert loss[8] < 0.1  # the label changes only across the edge, which the affinity does not cross
    assert loss[4] > 0.5 and loss[12] > 0.5  # a change inside a uniform region costs
    assert loss[8] < loss[4] / 5 and loss[8] < loss[12] / 5


def test_pairwise_loss_matches_its_definition_pair_by_pair() -> None:
    torch.manual_seed(1)
    logits, dilations = torch.randn(2, 3, 5, 6), [1, 2]
    affinity = torch.rand(2, 16, 5, 6)
    probs = logits.softmax(dim=1)
    total = weight_total = 0.0
    for b in range(2):
        for p, (dy, dx) in enumerate(neighbour_offsets(dilations)):
            for y in range(5):
                for x in range(6):
                    if 0 <= y + dy < 5 and 0 <= x + dx < 6:  # pairs reaching outside are not counted
                        same = (probs[b, :, y, x] * probs[b, :, y + dy, x + dx]).sum()
                        total -= affinity[b, p, y, x] * same.log()
                        weight_total += affinity[b, p, y, x]
    loss = pairwise_affinity_loss(logits, affinity, stride=1, dilations=dilations)
    assert loss.item() == pytest.approx(float(total / weight_total), rel=1e-5)


def test_pairwise_loss_on_marked_pixels_counts_the_pairs_touching_them() -> None:
    torch.manual_seed(2)
    logits, dilations = torch.randn(1, 3, 5, 6), [1]
    affinity = torch.rand(1, 8, 5, 6)
    pixels = torch.zeros(1, 5, 6, dtype=torch.bool)
    pixels[0, 2, 3] = pixels[0, 0, 0] = True
    probs = logits.softmax(dim=1)
    total = weight_total = 0.0
    for p, (dy, dx) in enumerate(neighbour_offsets(dilations)):
        for y, x in ((2, 3), (0, 0)):
            if 0 <= y + dy < 5 and 0 <= x + dx < 6:
                same = (probs[0, :, y, x] * probs[0, :, y + dy, x + dx]).sum()
                total -= affinity[0, p, y, x] * same.log()
                weight_total += affinity[0, p, y, x]
    loss = pairwise_affinity_loss(logits, affinity, stride=1, dilations=dilations, pixels=pixels)
    assert loss.item() == pytest.approx(float(total / weight_total), rel=1e-5)
    none = pairwise_affinity_loss(logits.requires_grad_(), affinity, stride=1, dilations=dilations,
                                  pixels=torch.zeros_like(pixels))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_unsure_pixels_marks_the_grid_cells_holding_an_unknown_pixel() -> None:
    target = torch.zeros(1, 5, 5, dtype=torch.long)
    target[0, 0, 0] = IGNORE
    target[0, 4, 3] = IGNORE
    assert unsure_pixels(target, stride=1).sum() == 2
    coarse = unsure_pixels(target, stride=2)
    assert coarse.shape == (1, 3, 3)
    assert coarse[0].nonzero().tolist() == [[0, 0], [2, 1]]


def test_pairwise_loss_on_unsure_pixels_leaves_a_labelled_thin_object_alone() -> None:
    # A one-pixel-wide stripe of class 1, labelled, inside a uniform region: over every pixel the
    # pairwise term pulls it into its surroundings; over the unsure pixels only (none near it), not.
    logits = torch.full((1, 2, 12, 16), -6.0)
    logits[0, 0] = 6.0
    logits[0, 0, :, 8], logits[0, 1, :, 8] = -6.0, 6.0
    affinity = pairwise_affinity(torch.zeros(1, 3, 12, 16), texture_window=1, stride=1, dilations=[1])
    target = torch.zeros(1, 12, 16, dtype=torch.long)
    target[:, :, 8] = 1
    target[:, :, :2] = IGNORE  # unsure far from the stripe
    grid = dict(stride=1, dilations=[1])
    assert pairwise_affinity_loss(logits, affinity, **grid) > 0.5
    assert pairwise_affinity_loss(logits, affinity, pixels=unsure_pixels(target, 1), **grid) < 0.01


def test_pairwise_affinity_is_a_distribution_over_neighbours_on_the_coarse_grid() -> None:
    image = two_region_image(height=11, width=15)
    affinity = pairwise_affinity(image, texture_window=5, stride=2, dilations=[1, 2, 4])
    assert affinity.shape == (1, 24, 6, 8)
    assert torch.allclose(affinity.sum(dim=1), torch.ones(1, 6, 8), atol=1e-5)
    logits = torch.randn(1, 3, 11, 15, requires_grad=True)
    pairwise_affinity_loss(logits, affinity, stride=2, dilations=[1, 2, 4]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not match"):
        pairwise_affinity_loss(logits, affinity, stride=1, dilations=[1, 2, 4])


# -- the loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("supervision", ["cls", "point", "full"])
def test_training_runs_and_logs_for_every_supervision(supervision: str) -> None:
    history = train_tiny(tiny_model(), supervision)
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) for row in history)
    assert {"loss", "seg", "center", "offset", "refine_ms", "lr", "seconds"} == set(history[0]) - {"step"}
    refined = [row["refine_ms"] > 0 for row in history]
    assert all(refined) if supervision != "full" else not any(refined)


@pytest.mark.parametrize("supervision", ["cls", "point"])
def test_semantic_self_refinement_changes_the_segmentation_term(supervision: str) -> None:
    refined = dataclasses.replace(TINY, seg_self_refine=SegRefineParams(iterations=3, texture_window=1, stride=1,
                                                                        dilations=[1, 2]), seg_self_refine_iter=1)
    plain, with_target = train_tiny(tiny_model(), supervision), train_tiny(tiny_model(), supervision, refined)
    assert all(np.isfinite(row["loss"]) for row in with_target)
    assert with_target[0]["seg"] == pytest.approx(plain[0]["seg"])  # iteration 0: not yet
    assert with_target[1]["seg"] != pytest.approx(plain[1]["seg"])
    assert with_target[1]["center"] == pytest.approx(plain[1]["center"])


def test_the_pairwise_term_is_logged_and_added_only_when_weighted() -> None:
    pairwise = dataclasses.replace(TINY, pairwise=PairwiseParams(weight=2.0, dilations=[1, 2]))
    plain, with_pairwise = train_tiny(tiny_model()), train_tiny(tiny_model(), params=pairwise)
    assert "pairwise" not in plain[0]
    first = with_pairwise[0]
    assert first["seg"] == pytest.approx(plain[0]["seg"])  # the same network at step 1
    expected = first["seg"] + TINY.center_weight * first["center"] + TINY.offset_weight * first["offset"]
    assert first["loss"] == pytest.approx(expected + 2.0 * first["pairwise"], rel=1e-5)
    unsure_only = dataclasses.replace(pairwise, pairwise=dataclasses.replace(pairwise.pairwise, pixels="unsure"))
    assert train_tiny(tiny_model(), params=unsure_only)[0]["pairwise"] != pytest.approx(first["pairwise"])


def test_the_late_hard_pixel_ratio_replaces_the_ratio_from_its_iteration_on() -> None:
    batch = collate_samples([FakeBestieData()[(0, 0)]])
    torch.manual_seed(0)
    outputs = {"seg": torch.randn(1, 3, 32, 32), "center": torch.zeros(1, 2, 32, 32),
               "offset": torch.zeros(1, 2, 32, 32)}
    weights = {k: v for k, v in WEIGHTS.items() if k != "hard_pixel_ratio"}
    criterion = BestieCriterion("full", NUM_CLASSES, **WEIGHTS, refine_from=None, refine_thresh=0.3,
                                refine_nms_kernel=41, refine_max_instances=5, sigma=6.0,
                                late_hard_pixel_ratio=1.0, late_hard_pixel_iter=5)
    for iteration, ratio in ((0, WEIGHTS["hard_pixel_ratio"]), (4, WEIGHTS["hard_pixel_ratio"]), (5, 1.0), (9, 1.0)):
        expected = compute_losses(outputs, batch, None, **weights, hard_pixel_ratio=ratio)
        assert criterion(outputs, batch, iteration)["seg"] == pytest.approx(expected["seg"].item())
    # The two shares give different terms here, so the switch above is visible.
    assert compute_losses(outputs, batch, None, **weights, hard_pixel_ratio=1.0)["seg"] != pytest.approx(
        compute_losses(outputs, batch, None, **WEIGHTS)["seg"].item())
    off = BestieCriterion("full", NUM_CLASSES, **WEIGHTS, refine_from=None, refine_thresh=0.3, refine_nms_kernel=41,
                          refine_max_instances=5, sigma=6.0)
    assert off.hard_pixel_ratio_at(10**6) == WEIGHTS["hard_pixel_ratio"]


def test_training_uses_the_late_hard_pixel_ratio_from_its_iteration_on() -> None:
    late = dataclasses.replace(TINY, late_hard_pixel_ratio=1.0, late_hard_pixel_iter=1)
    plain, with_late = train_tiny(tiny_model(), "full"), train_tiny(tiny_model(), "full", late)
    assert with_late[0]["seg"] == pytest.approx(plain[0]["seg"])  # iteration 0: not yet
    assert with_late[1]["seg"] != pytest.approx(plain[1]["seg"])


def test_refinement_switch_and_start_iteration() -> None:
    history = train_tiny(tiny_model(), params=dataclasses.replace(TINY, refine_iter=2))
    assert [row["refine_ms"] > 0 for row in history] == [False, False, True, True]
    history = train_tiny(tiny_model(), params=dataclasses.replace(TINY, refine=False))
    assert [row["refine_ms"] > 0 for row in history] == [False] * 4


def test_resumed_training_reaches_the_same_weights() -> None:
    straight = tiny_model()
    history = train_tiny(straight, seed=3)

    saved, saving = {}, tiny_model()

    def save_state(state: TrainState) -> None:
        # What save_checkpoint does: a snapshot, not live references the next step mutates.
        saved[state.iteration] = copy.deepcopy((saving.state_dict(), state))

    train_tiny(saving, seed=3, save_state=save_state)
    assert sorted(saved) == [2, 4]
    weights, state = saved[2]  # as if the run had been killed after iteration 2
    resumed = tiny_model()
    resumed.load_state_dict(weights)
    resumed_history = train_tiny(resumed, seed=3, state=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    def without_timings(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("seconds", "refine_ms")} for row in rows]

    assert without_timings(resumed_history) == without_timings(history)  # the saved rows, then the new ones


def test_iteration_seed_is_the_one_mask_rcnn_drew_before_it_had_a_rank() -> None:
    """Mask R-CNN reseeded from (seed, t), BESTIE from (seed, t, rank): numpy seeds both alike on rank 0."""
    for seed, iteration in [(0, 0), (3407, 1999), (2**32 - 1, 10**6)]:
        assert (np.random.default_rng([seed, iteration]).integers(2**62)
                == np.random.default_rng([seed, iteration, 0]).integers(2**62))


def test_a_non_finite_loss_names_the_lr_param_when_asked() -> None:
    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch, iteration):
            return {"loss": self.weight * batch / (iteration - 1)}  # inf at iteration 1

    def run(settings: LoopSettings) -> list[dict]:
        model = Diverging()
        optimizer = build_optimizer("sgd", model.parameters(), 0.1, 0.0)
        return train(model, [(t, torch.ones(())) for t in range(3)], optimizer, lambda lr, t: lr, settings, CPU)

    settings = LoopSettings(3, log_every=1, checkpoint_every=3)
    with pytest.raises(BestieError, match=r"^maskrcnn\.lr: the loss diverged \(-?inf\) at iteration 1; lower it$"):
        run(dataclasses.replace(settings, lr_key="maskrcnn.lr"))
    assert len(run(settings)) == 3  # without lr_key, no check: it goes on


def test_a_state_checkpoint_round_trips_through_its_file(tmp_path) -> None:
    model = tiny_model()
    generator = torch.Generator().manual_seed(5)
    optimizer = build_optimizer("adam", model.parameters(), 1e-3, 0.0)
    state = TrainState(7, optimizer.state_dict(), None, generator.get_state(),
                       [{"step": 7, "loss": 0.5, "lr": 1e-3, "refine_ms": 2.5}])
    path = tmp_path / "bestie-0123456789abcdef.pt"
    state_saver(path, model, kind="bestie", config={"lr": 1e-3}, class_names=["a", "b"])(state)

    run = find_run_state(tmp_path, stage="train", kind="bestie", fingerprint="0123456789abcdef", resume=True,
                         class_names=["a", "b"])
    restored = BestieNet(NUM_CLASSES, SmallBackbone(width=8))
    loaded = load_train_state(run, restored)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert (loaded.iteration, loaded.scaler, loaded.history) == (7, None, state.history)
    assert torch.equal(loaded.shuffle, state.shuffle)
    assert loaded.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert load_train_state(find_run_state(tmp_path, stage="train", kind="bestie", fingerprint="0123456789abcdef",
                                           resume=False, class_names=["a", "b"]), restored) == TrainState()


# -- device layout: the CUDA branches are module surgery, checked here without a GPU ------------

CUDA_PAIR = DistContext(0, 2, torch.device("cuda", 0))  # a model can be laid out for it on the CPU


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_cpu_layout_leaves_the_model_alone() -> None:
    """amp and channels_last are CUDA-only, and one CPU process or several (gloo) keep BatchNorm."""
    model = tiny_model()
    for context in (CPU, DistContext(0, 2, torch.device("cpu"))):
        assert device_layout(model, context, channels_last=True) is model
    assert all(w.is_contiguous() for w in _conv_weights(model))
    assert TINY.amp and TINY.channels_last  # the defaults train_tiny runs with on the CPU


@pytest.mark.parametrize("backbone", ["small", "hrnet_w32"])
def test_distributed_cuda_layout_syncs_every_batchnorm_and_goes_channels_last(backbone: str) -> None:
    model = BestieNet(NUM_CLASSES, backbone)
    optimizer = build_optimizer("adam", model.parameters(), 1e-3, 0.0)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    laid_out = device_layout(model, CUDA_PAIR, channels_last=True)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in laid_out.modules()) == norms
    assert not any(type(m) is torch.nn.BatchNorm2d for m in laid_out.modules())
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(laid_out))
    # the optimizer still holds the parameters the laid-out model trains
    assert {id(p) for p in laid_out.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_single_cuda_process_keeps_batchnorm_and_honours_the_flag() -> None:
    one_gpu = DistContext(0, 1, torch.device("cuda", 0))
    model = device_layout(tiny_model(), one_gpu, channels_last=False)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert all(w.is_contiguous() for w in _conv_weights(model))
