"""Edge-aware refinement: shifted views, the texture guide, PAMR and the local dense CRF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bestie import edge_refine


def test_shifted_views_shift_and_replicate_the_border() -> None:
    x = torch.arange(9.0).reshape(1, 3, 3)
    right, up = edge_refine.shifted_views(x, [(0, 1), (-1, 0)])
    assert right.shape == up.shape == (1, 3, 3)
    assert right[0].tolist() == [[1, 2, 2], [4, 5, 5], [7, 8, 8]]
    assert up[0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]
    assert len(edge_refine.neighbour_offsets((1, 3))) == 16 and (3, -3) in edge_refine.neighbour_offsets((1, 3))


def test_texture_guide_is_flat_inside_a_texture() -> None:
    # Stripes of period 3 (1, 0, 0, ...): colour changes every pixel, but a 3 px window always
    # holds one period, so mean 1/3 and spread sqrt(1/3 - 1/9) everywhere off the border.
    stripes = (torch.arange(12) % 3 == 0).float().expand(1, 12, 12)
    guide = edge_refine.texture_guide(stripes, window=3)
    assert guide.shape == (3, 12, 12)
    assert torch.equal(guide[0], stripes[0])
    inner = guide[1:, 1:-1, 1:-1]
    assert torch.allclose(inner[0], torch.full_like(inner[0], 1 / 3))
    assert torch.allclose(inner[1], torch.full_like(inner[1], (2 / 9) ** 0.5), atol=1e-6)
    assert edge_refine.texture_guide(stripes, 1) is stripes
    with pytest.raises(ValueError, match="odd"):
        edge_refine.texture_guide(stripes, 4)


def _two_regions(size: int = 32, edge: int = 12) -> tuple[Tensor, Tensor, Tensor]:
    """A sharp vertical colour edge at column ``edge`` and a CAM that blurs past it.

    Returns:
        image [3, H, W], scores [2, H, W] (background, object), truth [H, W] bool (object).
    """
    columns = torch.arange(size, dtype=torch.float32)
    truth = (columns < edge).expand(size, size)
    image = torch.where(truth, torch.tensor([0.8, 0.2, 0.2])[:, None, None], torch.tensor([0.2, 0.3, 0.7])[:, None, None])
    # The object's CAM fades out linearly 8 px too late: thresholding it at 0.3 overshoots.
    blurry = ((edge + 8 - columns) / 16).clamp(0, 1).expand(size, size)
    return image, torch.stack([torch.full_like(blurry, 0.3), blurry]), truth


def _iou(a: Tensor, b: Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


@pytest.mark.parametrize("method", ["pamr", "dense_crf"])
def test_refinement_snaps_a_blurry_cam_to_the_image_edge(method: str) -> None:
    image, scores, truth = _two_regions()
    raw = scores.argmax(dim=0) == 1
    if method == "pamr":
        refined = edge_refine.pamr(image, scores, dilations=(1, 2, 4), iterations=10)
    else:
        refined = edge_refine.dense_crf(image, scores / scores.sum(dim=0, keepdim=True), dilations=(1, 2, 4, 8))
    assert refined.shape == scores.shape
    refined_mask = refined.argmax(dim=0) == 1
    assert _iou(raw, truth) < 0.8
    assert _iou(refined_mask, truth) > 0.95


def test_pamr_keeps_uniform_scores_and_scales_freely() -> None:
    image, scores, _ = _two_regions(16, 6)
    flat = torch.full_like(scores, 0.5)
    assert torch.allclose(edge_refine.pamr(image, flat, (1, 2), 3), flat)
    # The affinities do not depend on the colour scale.
    assert torch.allclose(edge_refine.pamr(image, scores, (1, 2), 3), edge_refine.pamr(255 * image, scores, (1, 2), 3), atol=1e-5)


def _pamr_by_definition(guide: Tensor, scores: Tensor, dilations, iterations: int, temperature: float = 0.1) -> Tensor:
    """PAMR as its docstring defines it, each neighbour gathered by a clamped index and the
    standard deviation taken by torch.std over the stacked window."""
    _, height, width = guide.shape
    offsets = edge_refine.neighbour_offsets(dilations)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows = [(ys + dy).clamp(0, height - 1) for dy, _ in offsets]
    cols = [(xs + dx).clamp(0, width - 1) for _, dx in offsets]
    neighbours = torch.stack([guide[:, r, c] for r, c in zip(rows, cols)])  # [P, F, H, W]
    spread = torch.cat([neighbours, guide[None]]).std(dim=0)
    weights = (-((neighbours - guide).abs() / (temperature * spread + 1e-8)).mean(dim=1)).softmax(dim=0)
    for _ in range(iterations):
        scores = sum(w * scores[:, r, c] for w, r, c in zip(weights, rows, cols))
    return scores


@pytest.mark.parametrize(
    "dilations",
    [(1,), (1, 3), (2, 2), (1, 2, 4, 8, 12, 16), (1, 2, 4, 8, 12, 24), (5, 30)],  # params, the function default, beyond the image
)
@pytest.mark.parametrize("shape", [(13, 17), (8, 5)])
def test_pamr_equals_its_definition(dilations: tuple[int, ...], shape: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(dilations) + shape[0])
    guide = torch.randn(6, *shape, generator=generator)
    scores = torch.rand(4, *shape, generator=generator)
    expected = _pamr_by_definition(guide, scores, dilations, iterations=10)
    assert torch.allclose(edge_refine.pamr(guide, scores, dilations, iterations=10), expected, rtol=0, atol=1e-4)
    weights = edge_refine.pamr_affinity(guide, dilations)
    assert weights.shape == (shape[0] * shape[1], 8 * len(dilations))
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(weights)))


@pytest.mark.parametrize("dilations", [(1,), (1, 2, 4, 8, 12, 16), (5, 30)])
@pytest.mark.parametrize("shape", [(3, 13, 17), (9, 8, 5), (9, 40, 57)])
def test_pamr_affinity_cpu_kernel_equals_the_tensor_version(dilations, shape) -> None:
    # The tensor version is what runs off the CPU (CUDA); the fused kernel what runs on it.
    generator = torch.Generator().manual_seed(sum(dilations) + shape[1])
    guide = torch.randn(*shape, generator=generator)
    guide[:, : shape[1] // 2] = 0.5  # a flat region: the spread is rounding noise there
    kernel = edge_refine.pamr_affinity(guide, dilations)
    tensors = edge_refine._pamr_affinity_tensors(guide, dilations, 0.1)
    assert kernel.dtype == tensors.dtype == torch.float32
    assert torch.allclose(kernel, tensors, rtol=0, atol=1e-5)


def test_neighbour_index_follows_the_shifted_views() -> None:
    x = torch.randn(2, 7, 9)
    offsets = edge_refine.neighbour_offsets((1, 4))
    index = edge_refine.neighbour_index(7, 9, offsets)
    views = torch.stack(edge_refine.shifted_views(x, offsets))  # [P, C, H, W]
    assert index.dtype == torch.int32
    assert torch.equal(x.reshape(2, -1)[:, index.long()], views.permute(1, 2, 3, 0).reshape(2, 63, len(offsets)))


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_mean_pool_is_avg_pool_with_partial_blocks(stride: int) -> None:
    x = torch.rand(3, 13, 18, generator=torch.Generator().manual_seed(stride))
    expected = F.avg_pool2d(x[None], stride, ceil_mode=True)[0]
    assert torch.allclose(edge_refine.mean_pool(x, stride), expected, atol=1e-6)


def test_texture_guide_box_is_avg_pool_with_replicated_border() -> None:
    image = torch.rand(3, 11, 14, generator=torch.Generator().manual_seed(0))
    padded = F.pad(image[None], (2,) * 4, mode="replicate")
    mean = F.avg_pool2d(padded, 5, stride=1)[0]
    spread = (F.avg_pool2d(padded * padded, 5, stride=1)[0] - mean * mean).clamp(min=0).sqrt()
    guide = edge_refine.texture_guide(image, 5)
    assert torch.allclose(guide[3:6], mean, atol=1e-6)
    assert torch.allclose(guide[6:], spread, atol=1e-5)
