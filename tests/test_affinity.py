"""The affinity refinement of the WSSS maps (bestie.affinity, docs/method.md §2): its pairs, its
targets and loss, the random walk over learnt affinities, and the stage's `method: affinity`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bestie.affinity import (
    AffinityTraining, affinity_loss, affinity_targets, disc_offsets, pair_affinities, propagate_labels, random_walk,
)
from bestie.data.png import read_label_png
from bestie.models import EmbeddingNet, SmallBackbone

from .helpers import run_stage, write_params
from .test_wsss_network import ID, prepared, train_on_toy_squares  # noqa: F401  (prepared: a fixture)


class FixedEmbedding(nn.Module):
    """A "network" whose embedding is given: two regions split by the column ``split``."""

    def __init__(self, height: int, width: int, split: int):
        super().__init__()
        embedding = torch.zeros(1, 2, height, width)
        embedding[0, 0, :, split:] = 50.0  # a(i, j) = exp(-25) across the split, 1 within a side
        self.embedding = embedding

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self.embedding}


def test_disc_offsets_are_the_pairs_within_the_radius_once_or_both_ways() -> None:
    assert disc_offsets(2, half=False) == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for radius in (2, 5, 8):
        full, half = disc_offsets(radius, half=False), disc_offsets(radius, half=True)
        assert all(0 < dy * dy + dx * dx < radius * radius for dy, dx in full)
        assert sorted(half + [(-dy, -dx) for dy, dx in half]) == sorted(full)
        assert len(set(half)) == len(half) == len(full) // 2
    assert len(disc_offsets(5, half=True)) == 34  # AffinityNet's radius-5 pairs
    with pytest.raises(ValueError, match="radius"):
        disc_offsets(1, half=True)


def test_pair_affinities_are_one_for_equal_features_and_symmetric() -> None:
    torch.manual_seed(0)
    embedding = torch.randn(1, 4, 6, 7)
    offsets = [(0, 1), (0, -1), (1, 2), (-1, -2)]
    affinity = pair_affinities(embedding, offsets)
    assert affinity.shape == (1, 4, 6, 7)
    assert float(affinity.max()) <= 1.0 and float(affinity.min()) > 0.0
    expected = torch.exp(-(embedding[0, :, 2, 3] - embedding[0, :, 3, 5]).abs().mean())
    assert torch.allclose(affinity[0, 2, 2, 3], expected)
    # a(i, i + o) == a(i + o, i): offset (1, 2) at (2, 3) is offset (-1, -2) at (3, 5).
    assert torch.allclose(affinity[0, 2, 2, 3], affinity[0, 3, 3, 5])
    assert torch.equal(pair_affinities(torch.ones(1, 3, 4, 4), offsets), torch.ones(1, 4, 4, 4))


def test_affinity_targets_pair_known_labels_only() -> None:
    labels = torch.tensor([[[0, 0, 1], [255, 1, 2]]])
    background, objects, negatives = affinity_targets(labels, [(0, 1), (1, 0)])
    # Offset (0, 1): (0,0)-(0,1) background; (0,1)-(0,2) 0 vs 1 negative; (1,1)-(1,2) 1 vs 2 negative;
    # (1,0) is unsure; the last column's neighbour is off the grid.
    assert background[0, 0].tolist() == [[True, False, False], [False, False, False]]
    assert negatives[0, 0].tolist() == [[False, True, False], [False, True, False]]
    assert not objects[0, 0].any()
    # Offset (1, 0): (0,1)-(1,1) 0 vs 1 negative; (0,2)-(1,2) 1 vs 2 negative; (0,0)-(1,0) unsure.
    assert negatives[0, 1].tolist() == [[False, True, True], [False, False, False]]
    labels = torch.tensor([[[3, 3], [3, 255]]])
    _, objects, _ = affinity_targets(labels, [(0, 1)])
    assert objects[0, 0].tolist() == [[True, False], [False, False]]


def test_affinity_loss_balances_its_three_terms_as_defined() -> None:
    torch.manual_seed(0)
    offsets = disc_offsets(3, half=True)
    labels = torch.randint(0, 3, (2, 9, 9))
    labels[:, :2] = 255
    affinity = torch.rand(2, len(offsets), 9, 9) * 0.98 + 0.01
    losses = affinity_loss(affinity, labels, offsets)
    background, objects, negatives = affinity_targets(labels, offsets)
    assert torch.allclose(losses["bg"], -affinity[background].log().mean(), atol=1e-4)
    assert torch.allclose(losses["fg"], -affinity[objects].log().mean(), atol=1e-4)
    assert torch.allclose(losses["neg"], -(1 - affinity[negatives]).log().mean(), atol=1e-4)
    assert torch.allclose(losses["loss"], losses["bg"] / 4 + losses["fg"] / 4 + losses["neg"] / 2)
    # No object pair (only background and one class never side by side): that term adds 0, finitely.
    alone = torch.zeros(1, 9, 9, dtype=torch.long)
    alone[0, 4, 4] = 1
    affinity = torch.full((1, len(offsets), 9, 9), 0.5, requires_grad=True)
    losses = affinity_loss(affinity, alone, offsets)
    assert float(losses["fg"].detach()) == 0.0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert torch.isfinite(affinity.grad).all()


def test_an_embedding_that_splits_the_labels_costs_less_than_a_constant_one() -> None:
    offsets = disc_offsets(3, half=True)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 2
    split = FixedEmbedding(8, 8, 4).embedding
    constant = torch.zeros_like(split)
    assert affinity_loss(pair_affinities(split, offsets), labels, offsets)["loss"] < 1e-3
    assert affinity_loss(pair_affinities(constant, offsets), labels, offsets)["loss"] > 1.0


def test_the_random_walk_keeps_constants_and_stays_within_regions() -> None:
    embedding = FixedEmbedding(10, 12, 6).embedding[0]
    walked = random_walk(embedding, torch.ones(1, 10, 12), radius=3, beta=8.0, steps=20)
    assert torch.allclose(walked, torch.ones(1, 10, 12))  # transitions sum to 1, off-grid ones left out
    seeds = torch.zeros(2, 10, 12)
    seeds[0, 5, 1] = 1.0  # one seed of each label, one on each side of the split
    seeds[1, 5, 10] = 1.0
    walked = random_walk(embedding, seeds, radius=3, beta=8.0, steps=50)
    assert float(walked[0, :, 6:].max()) < 1e-6 < float(walked[0, :, :6].min())
    assert float(walked[1, :, :6].max()) < 1e-6 < float(walked[1, :, 6:].min())
    # beta 0 weighs every neighbour alike: the walk crosses the split.
    crossed = random_walk(embedding, seeds, radius=3, beta=0.0, steps=50)
    assert float(crossed[0, :, 6:].min()) > 1e-6


def test_propagation_fills_unsure_pixels_and_stops_at_the_learnt_boundary() -> None:
    network = FixedEmbedding(8, 10, 5)  # the embedding grid: a quarter of the image's side
    labels = torch.full((32, 40), 255, dtype=torch.uint8)
    labels[4:12, 4:12] = 3  # a few known pixels on the left of the split, class 2
    labels[20:28, 24:36] = 0  # and some background on the right
    propagated = propagate_labels(network, torch.zeros(3, 32, 40), labels, 5, radius=3, beta=8.0, steps=30,
                                  min_confidence=0.0)
    assert propagated.dtype == torch.uint8 and propagated.shape == (32, 40)
    assert set(propagated.unique().tolist()) == {0, 3}  # the map's labels only
    assert (propagated[:, :18] == 3).all() and (propagated[:, 22:] == 0).all()  # each side its seed's label
    nothing = propagate_labels(network, torch.zeros(3, 32, 40), torch.full((32, 40), 255, dtype=torch.uint8), 5,
                               radius=3, beta=8.0, steps=5, min_confidence=0.0)
    assert (nothing == 255).all()  # no seed: no label


def test_a_tiny_affinity_training_run_lowers_the_loss() -> None:
    torch.manual_seed(0)
    history = train_on_toy_squares(AffinityTraining(EmbeddingNet(8, SmallBackbone(width=8)), radius=3))
    losses = [row["loss"] for row in history]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert {"bg", "fg", "neg"} <= history[-1].keys()


def test_with_the_affinity_method_the_stage_walks_the_wsss_maps(prepared: Path, voc_fixture_root: Path) -> None:  # noqa: F811
    write_params(prepared / "params.yaml", {
        "data": {"root": str(voc_fixture_root)}, "wsss": {"network": True},
        "wsss_network": {"method": "affinity", "iterations": 2, "batch_size": 1, "crop_size": 32, "warmup_iters": 1,
                         "log_every": 1, "walk_steps": 4},
    })
    result = run_stage("wsss_network", prepared, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    given = read_label_png(prepared / f"data/wsss/{ID}.png")
    labels = read_label_png(prepared / f"data/wsss_network/{ID}.png")
    assert labels.shape == given.shape
    assert set(np.unique(labels).tolist()) <= set(np.unique(given).tolist())  # the maps' labels, moved
    metrics = json.loads((prepared / "metrics/wsss_network.json").read_text())
    assert metrics["network"] == 1 and "miou" in metrics and "miou_wsss_input" in metrics
    assert len((prepared / "metrics/wsss_network/log.tsv").read_text().splitlines()) == 3
