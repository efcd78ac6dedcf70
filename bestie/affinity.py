"""Affinity-style refinement of the WSSS maps (AffinityNet: Ahn & Kwak, CVPR 2018), the
``wsss_network`` stage's ``method: affinity`` (docs/method.md §2).

A network learns from the maps which nearby pixels belong together, then a random walk over
those learnt affinities spreads each label of the maps within its object and stops at the
boundaries the network learnt::

    image -> EmbeddingNet -> f [D, h, w]             (the decoder's grid)
    a(i, j) = exp(-mean_d |f_d(i) - f_d(j)|)          (:func:`pair_affinities`; j within a radius)
    training: pairs of the map's known pixels: same label -> a = 1, different labels -> a = 0
              (:func:`affinity_loss`; background pairs, object pairs and negatives balanced)
    inference: seeds = the map one-hot (unsure pixels: no mass), walked ``steps`` times with
               transitions a(i, j)^beta / sum_j a(i, j)^beta, arg max (:func:`propagate_labels`)

AffinityNet walks CAM scores; here the walk starts from the refined maps themselves, so its
labels stay the WSSS step's and only their extent moves: into the unsure pixels, and across
edges the maps got wrong where the learnt affinity says the pixels belong together.
Every function follows its inputs' device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bestie.edge_refine import diffuse
from bestie.runtime import autocast
from bestie.structures import IGNORE
from bestie.wsss_network import confident_labels

__all__ = [
    "AffinityTraining", "affinity_loss", "affinity_targets", "disc_offsets", "pair_affinities",
    "propagate_labels", "random_walk",
]

_EPS = 1e-5  # keeps the log finite at affinities of exactly 0 or 1


def disc_offsets(radius: int, *, half: bool) -> list[tuple[int, int]]:
    """The offsets (dy, dx) with ``0 < dy^2 + dx^2 < radius^2``, row by row.

    ``half``: one of each pair ``o, -o`` (``dy > 0``, or ``dy == 0`` and ``dx > 0``): the
    pairs to learn, since a(i, j) = a(j, i).
    """
    if radius < 2:
        raise ValueError(f"radius: must be at least 2 (1 holds no neighbour), got {radius}")
    offsets = [(dy, dx) for dy in range(-radius + 1, radius) for dx in range(-radius + 1, radius)
               if 0 < dy * dy + dx * dx < radius * radius]
    return [(dy, dx) for dy, dx in offsets if dy > 0 or (dy == 0 and dx > 0)] if half else offsets


def _reach(offsets: Sequence[tuple[int, int]]) -> int:
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets)


def pair_affinities(embedding: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """``a(i, i + o) = exp(-mean_d |f_d(i) - f_d(i + o)|)``, in (0, 1].

    Args:
        embedding: ``[B, D, h, w]``.
        offsets: P pairs (dy, dx); a neighbour off the grid is the nearest border pixel.
    Returns:
        ``[B, P, h, w]``.
    """
    height, width = embedding.shape[-2:]
    reach = _reach(offsets)
    padded = F.pad(embedding, (reach,) * 4, mode="replicate")
    distances = [(padded[..., reach + dy : reach + dy + height, reach + dx : reach + dx + width] - embedding)
                 .abs().mean(dim=1) for dy, dx in offsets]
    return torch.stack(distances, dim=1).neg().exp()


def affinity_targets(labels: Tensor, offsets: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Which pairs ``(i, i + o)`` should have affinity 1 and which 0.

    Args:
        labels: ``[B, h, w]`` int; 0 background, c + 1 class c, 255 unsure.
    Returns:
        three ``[B, P, h, w]`` bool: background pairs (both 0), object pairs (both the same
        class), negative pairs (two different known labels). A pair with an unsure pixel or a
        neighbour off the grid is in none.
    """
    height, width = labels.shape[-2:]
    reach = _reach(offsets)
    padded = F.pad(labels, (reach,) * 4, value=IGNORE)
    other = torch.stack([padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width]
                         for dy, dx in offsets], dim=1)
    this = labels[:, None]
    known = (this != IGNORE) & (other != IGNORE)
    same = known & (this == other)
    return same & (this == 0), same & (this != 0), known & (this != other)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def affinity_loss(affinity: Tensor, labels: Tensor, offsets: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
    """AffinityNet's loss: ``bg / 4 + fg / 4 + neg / 2``, each a mean over its pairs
    (:func:`affinity_targets`) of ``-log a`` (``bg``, ``fg``) or ``-log(1 - a)`` (``neg``), so
    the many background pairs do not drown the others. An empty set of pairs adds 0.

    Args:
        affinity: ``[B, P, h, w]`` (:func:`pair_affinities`).
        labels: ``[B, h, w]`` on the same grid.
    Returns:
        ``{"loss", "bg", "fg", "neg"}`` scalars.
    """
    background, objects, negatives = affinity_targets(labels, offsets)
    pull, push = -torch.log(affinity + _EPS), -torch.log(1 + _EPS - affinity)
    terms = {"bg": _masked_mean(pull, background), "fg": _masked_mean(pull, objects),
             "neg": _masked_mean(push, negatives)}
    return {"loss": terms["bg"] / 4 + terms["fg"] / 4 + terms["neg"] / 2, **terms}


class AffinityTraining(nn.Module):
    """``forward(batch, iteration)``: :func:`affinity_loss` of ``network(batch["image"])["embedding"]``
    against ``batch["semantic"]`` ([B, H, W] long, 255 unsure) taken at the embedding's grid
    (nearest pixel), over :func:`disc_offsets` ``(radius, half=True)``; float32, outside autocast."""

    def __init__(self, network: nn.Module, radius: int):
        super().__init__()
        self.network, self.offsets = network, disc_offsets(radius, half=True)

    def forward(self, batch: dict, iteration: int) -> dict:
        embedding = self.network(batch["image"])["embedding"]
        with autocast(batch["image"].device, enabled=False):
            labels = F.interpolate(batch["semantic"][:, None].float(), size=embedding.shape[-2:], mode="nearest")
            affinity = pair_affinities(embedding.float(), self.offsets)
            return affinity_loss(affinity, labels[:, 0].long(), self.offsets)


def random_walk(embedding: Tensor, seeds: Tensor, *, radius: int, beta: float, steps: int) -> Tensor:
    """``steps`` steps of a random walk of ``seeds`` over the learnt affinities.

    A step replaces each pixel's scores by the mean of its own and its neighbours' within
    ``radius`` (the pixel itself has affinity 1), weighted by ``a(i, j) ** beta``; neighbours off
    the grid are left out. ``beta`` sharpens: weak affinities (edges) carry almost nothing.

    Args:
        embedding: ``[D, h, w]``.
        seeds: ``[K, h, w]`` non-negative scores.
    Returns:
        ``[K, h, w]`` float32.
    """
    height, width = embedding.shape[-2:]
    offsets = [(0, 0), *disc_offsets(radius, half=False)]
    weights = pair_affinities(embedding[None].float(), offsets)[0].pow_(beta)  # [P, h, w]
    shift = torch.tensor(offsets, device=embedding.device)
    rows = torch.arange(height, device=embedding.device)[:, None] + shift[:, 0]  # [h, P]
    cols = torch.arange(width, device=embedding.device)[:, None] + shift[:, 1]  # [w, P]
    inside = ((rows >= 0) & (rows < height)).t()[:, :, None] & ((cols >= 0) & (cols < width)).t()[:, None, :]
    weights = (weights * inside).flatten(1).t()  # [h * w, P]
    return diffuse(weights / weights.sum(dim=1, keepdim=True), offsets, seeds, steps)


@torch.no_grad()
def propagate_labels(
    network: nn.Module, image: Tensor, labels: Tensor, num_labels: int, *,
    radius: int, beta: float, steps: int, min_confidence: float,
) -> Tensor:
    """One image's map walked over the affinities an eval-mode network sees in it.

    Args:
        image: ``[3, H, W]`` normalised, on the network's device.
        labels: ``[H, W]`` uint8 map on the same device: 0 background, c + 1 class c, 255 unsure.
        num_labels: C + 1.
        min_confidence: pixels whose winning share of the walked scores is below it become 255.
    Returns:
        ``[H, W]`` uint8, the labels of ``labels`` only; 255 where no seed's walk arrived.
    """
    embedding = network(image[None])["embedding"][0]
    known = labels != IGNORE
    one_hot = F.one_hot(torch.where(known, labels, 0).long(), num_labels).permute(2, 0, 1).float() * known
    seeds = F.interpolate(one_hot[None], size=embedding.shape[-2:], mode="area")[0]
    walked = random_walk(embedding, seeds, radius=radius, beta=beta, steps=steps)
    walked = F.interpolate(walked[None], size=labels.shape, mode="bilinear", align_corners=False)[0]
    mass = walked.sum(dim=0)
    walked_labels = confident_labels(walked / mass.clamp(min=1e-12), min_confidence)
    return walked_labels.masked_fill(mass <= 0, IGNORE)
