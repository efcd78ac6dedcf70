"""Edge-aware refinement of class scores (docs/method.md §2): scores diffused within regions of
like colour and texture and stopped at image edges.

Used on the CAM scores of the WSSS maps (:mod:`bestie.wsss`) and on the trained network's
class probabilities before grouping (:func:`bestie.inference.refine_segmentation`), both
through :func:`refine_scores`: :func:`pamr` (pixel-adaptive mask refinement) or
:func:`dense_crf` (a local dense CRF), guided by :func:`texture_guide`, on a coarser grid.
Every function is pure and follows its input's device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "neighbour_offsets", "shifted_views", "neighbour_index", "texture_guide", "mean_pool", "pamr_affinity", "pamr",
    "diffuse",
    "dense_crf", "refine_scores",
]


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours of a 3x3 window at each dilation, as (dy, dx) pairs."""
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in ring]


def shifted_views(x: Tensor, offsets: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Each pixel's values at the given offsets, as views of one border-replicated copy.

    Refinement loops over these P views and accumulates, rather than stacking a
    ``[C, P, H, W]`` tensor: the same arithmetic, a P-times smaller working set.

    Args:
        x: ``[C, H, W]``.
        offsets: P pairs (dy, dx).
    Returns:
        P tensors ``[C, H, W]``: ``views[p][:, y, x] = x[:, clamp(y + dy_p), clamp(x + dx_p)]``.
    """
    height, width = x.shape[-2:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], (reach,) * 4, mode="replicate")[0]
    return [padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width] for dy, dx in offsets]


def texture_guide(image: Tensor, window: int = 5) -> Tensor:
    """Colour plus its local mean and standard deviation: what refinement compares pixels by.

    Colour alone separates a two-tone textured object into its two tones; the mean and the
    spread over a ``window`` x ``window`` box are nearly constant across such a texture and
    still change at the object's border.

    Args:
        image: ``[C, H, W]`` float.
        window: odd box size; 1 returns ``image`` unchanged.
    Returns:
        ``[3C, H, W]`` (``[C, H, W]`` for window 1).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd size >= 1, got {window}")
    if window == 1:
        return image
    image = image.float()
    moments = _box_mean(torch.cat([image, image * image]), window)
    mean, second = moments.chunk(2)
    return torch.cat([image, mean, (second - mean * mean).clamp_(min=0).sqrt_()])


def _box_mean(x: Tensor, window: int) -> Tensor:
    """Mean over the ``window`` x ``window`` box around each pixel of ``[C, H, W]``, the border
    replicated: separable sums, 2 (window - 1) additions a pixel instead of window²."""
    padded = F.pad(x[None], (window // 2,) * 4, mode="replicate")[0]
    height, width = x.shape[-2:]
    across = padded[..., :width].clone()
    for dx in range(1, window):
        across += padded[..., dx : dx + width]
    total = across[:, :height].clone()
    for dy in range(1, window):
        total += across[:, dy : dy + height]
    return total.div_(window * window)


def mean_pool(x: Tensor, stride: int) -> Tensor:
    """``[C, H, W]`` averaged over ``stride`` x ``stride`` blocks, a partial block at the
    bottom or right over the pixels it holds: ``F.avg_pool2d(x, stride, ceil_mode=True)``
    as sums of every stride-th row, then of every stride-th column.

    Returns:
        ``[C, ceil(H / stride), ceil(W / stride)]``.
    """
    _, height, width = x.shape
    rows = x[:, ::stride].clone()
    for dy in range(1, stride):
        part = x[:, dy::stride]
        rows[:, : part.shape[1]] += part
    total = rows[..., ::stride].clone()
    for dx in range(1, stride):
        part = rows[..., dx::stride]
        total[..., : part.shape[2]] += part
    count_rows = (height - stride * torch.arange(total.shape[1], device=x.device)).clamp_(max=stride)
    count_cols = (width - stride * torch.arange(total.shape[2], device=x.device)).clamp_(max=stride)
    return total.div_(count_rows[:, None] * count_cols)


def neighbour_index(
    height: int, width: int, offsets: Sequence[tuple[int, int]], device: torch.device | None = None
) -> Tensor:
    """Flat index of each pixel's neighbours, the border replicated (as :func:`shifted_views`).

    Returns:
        ``[H * W, P]`` int32: ``index[y * W + x, p] = clamp(y + dy_p) * W + clamp(x + dx_p)``.
    """
    shift = torch.tensor(offsets, dtype=torch.int32, device=device)
    rows = (torch.arange(height, dtype=torch.int32, device=device)[:, None] + shift[:, 0]).clamp_(0, height - 1)
    cols = (torch.arange(width, dtype=torch.int32, device=device)[:, None] + shift[:, 1]).clamp_(0, width - 1)
    return (rows.mul_(width)[:, None, :] + cols[None, :, :]).view(height * width, len(offsets))


def _window_spread(padded: Tensor, reach: int, dilations: Sequence[int]) -> Tensor:
    """Unbiased standard deviation of each channel over a pixel and its :func:`neighbour_offsets`.

    A 3 x 3 sum a dilation, separable: 4 additions a dilation instead of 8 shifted views.

    Args:
        padded: ``[2F, H + 2 reach, W + 2 reach]``: the channels, then their squares, border
            replicated by ``reach >= max(dilations)``.
    Returns:
        ``[F, H, W]``.
    """
    channels = len(padded) // 2
    height, width = padded.shape[1] - 2 * reach, padded.shape[2] - 2 * reach
    # Each 3 x 3 sum counts the pixel itself once.
    total = padded[:, reach : reach + height, reach : reach + width] * (1 - len(dilations))
    buffer = padded.new_empty(2 * channels * (height + 2 * reach) * width)
    for d in dilations:
        rows = padded[:, reach - d : reach + height + d]
        across = buffer[: 2 * channels * (height + 2 * d) * width].view(2 * channels, height + 2 * d, width)
        torch.add(rows[..., reach - d : reach - d + width], rows[..., reach : reach + width], out=across)
        across += rows[..., reach + d : reach + d + width]
        total += across[:, :height]
        total += across[:, d : d + height]
        total += across[:, 2 * d : 2 * d + height]
    count = 8 * len(dilations) + 1
    total /= count
    mean, second = total[:channels], total[channels:]
    return (second - mean * mean).clamp_(min=0).mul_(count / (count - 1)).sqrt_()


def pamr_affinity(guide: Tensor, dilations: Sequence[int], temperature: float = 0.1) -> Tensor:
    """The weights of :func:`pamr`: each pixel's softmax over its neighbours (see there).

    On the CPU one fused kernel computes them (:mod:`bestie.edge_refine_cpu`); on other
    devices tensor operations, in which ``|g_i - g_j|`` being symmetric lets the differences
    of offset o also give those of -o, shifted by o: half the offsets are differenced.

    Args:
        guide: ``[F, H, W]`` float.
    Returns:
        ``[H * W, P]`` float32 on ``guide``'s device, rows summing to 1, neighbours in
        :func:`neighbour_offsets` order.
    """
    if guide.device.type == "cpu":
        return _pamr_affinity_cpu(guide, dilations, temperature)
    return _pamr_affinity_tensors(guide, dilations, temperature)


def _pamr_affinity_cpu(guide: Tensor, dilations: Sequence[int], temperature: float) -> Tensor:
    from bestie.edge_refine_cpu import pamr_logits_kernel  # numba compiles (or loads) it on first use

    _, height, width = guide.shape
    reach = max(dilations)
    padded = F.pad(guide.detach().float()[None], (reach,) * 4, mode="replicate")[0].contiguous()
    offsets = np.array(neighbour_offsets(dilations), dtype=np.int64)
    weights = torch.empty(height * width, len(offsets))
    pamr_logits_kernel(padded.numpy(), reach, offsets, np.float32(temperature), weights.numpy())
    weights.exp_()
    return weights.div_(weights.sum(dim=1, keepdim=True))


def _pamr_affinity_tensors(guide: Tensor, dilations: Sequence[int], temperature: float) -> Tensor:
    guide = guide.float()
    channels, height, width = guide.shape
    offsets = neighbour_offsets(dilations)
    reach = max(dilations)
    padded = F.pad(torch.cat([guide, guide * guide])[None], (reach,) * 4, mode="replicate")[0]
    spread = _window_spread(padded, reach, dilations)
    neg_scale = spread.mul_(temperature).add_(1e-8).mul_(-channels).reciprocal_()  # also averages over F
    padded = padded[:channels]
    logits = guide.new_empty(len(offsets), height, width)
    slots = {}
    for p, offset in enumerate(offsets):
        slots.setdefault(offset, []).append(p)
    diff_buffer = torch.empty(channels * (height + reach) * (width + reach), device=guide.device)
    for (dy, dx), slot in slots.items():
        if (-dy, -dx) in slots and (dy, dx) < (-dy, -dx):
            continue  # differenced with its opposite
        # diff[j] = |g(j + o) - g(j)| over the image and the image shifted by -o.
        top, left = reach + min(0, -dy), reach + min(0, -dx)
        rows, cols = height + abs(dy), width + abs(dx)
        diff = diff_buffer[: channels * rows * cols].view(channels, rows, cols)
        torch.sub(
            padded[:, top + dy : top + dy + rows, left + dx : left + dx + cols],
            padded[:, top : top + rows, left : left + cols], out=diff,
        ).abs_()
        y0, x0 = reach - top, reach - left  # where the image starts inside diff
        targets = [(slot, y0, x0)]
        if (-dy, -dx) in slots:
            targets.append((slots[(-dy, -dx)], y0 - dy, x0 - dx))  # |g(i - o) - g(i)| = diff[i - o]
        for target, y, x in targets:
            out = logits[target[0]]
            torch.mul(diff[0, y : y + height, x : x + width], neg_scale[0], out=out)
            for f in range(1, channels):
                out.addcmul_(diff[f, y : y + height, x : x + width], neg_scale[f])
            for p in target[1:]:
                logits[p] = out
    flat = logits.view(len(offsets), -1)
    flat.sub_(flat.amax(dim=0)).exp_()
    flat.div_(flat.sum(dim=0))
    return flat.t().contiguous()


def pamr(
    guide: Tensor,
    scores: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    iterations: int = 10,
    temperature: float = 0.1,
) -> Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

    Each iteration replaces a pixel's scores by an average of its neighbours' (8 a dilation),
    weighted by how alike the neighbour looks::

        w_ij = softmax_j( -mean_f |g_fi - g_fj| / (temperature * std_f(i)) )

    with ``std_f(i)`` the guide channel's standard deviation over i and its neighbours, so the
    weights adapt to the local contrast: scores spread within regions and stop at edges.
    The weights are invariant to a per-channel affine change of the guide.

    The weights are computed once (:func:`pamr_affinity`) and applied by :func:`diffuse`.

    Args:
        guide: ``[F, H, W]`` float, e.g. colours or :func:`texture_guide`.
        scores: ``[K + 1, H, W]``.
    Returns:
        ``[K + 1, H, W]`` float32 refined scores (a pixel's total is a weighted average of totals).
    """
    return diffuse(pamr_affinity(guide, dilations, temperature), neighbour_offsets(dilations), scores, iterations)


def diffuse(weights: Tensor, offsets: Sequence[tuple[int, int]], scores: Tensor, iterations: int) -> Tensor:
    """``iterations`` steps of ``scores[:, i] <- sum_p weights[i, p] * scores[:, i + offsets[p]]``.

    The weights are held as one sparse ``[H * W, H * W]`` matrix, so a step is one sparse-dense
    product on channels-last scores: the scores are read once a step, not once a neighbour.
    A neighbour off the image is its nearest border pixel (:func:`neighbour_index`); give it
    weight 0 to leave it out.

    Args:
        weights: ``[H * W, P]`` float32, e.g. rows summing to 1 (a random walk's transitions).
        offsets: the P neighbours (dy, dx).
        scores: ``[K, H, W]``.
    Returns:
        ``[K, H, W]`` float32.
    """
    channels, height, width = scores.shape
    index = neighbour_index(height, width, offsets, scores.device)
    row_starts = torch.arange(0, index.numel() + 1, len(offsets), dtype=torch.int32, device=scores.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        warnings.filterwarnings("ignore", "Sparse invariant checks", UserWarning)
        averaging = torch.sparse_csr_tensor(row_starts, index.view(-1), weights.reshape(-1), (height * width,) * 2)
    # Channels-last rows padded to a multiple of 8 floats, which the product vectorises fully.
    flat = scores.new_zeros(height * width, -(-channels // 8) * 8, dtype=torch.float32)
    flat[:, :channels] = scores.reshape(channels, -1).t()
    spare = torch.empty_like(flat)
    for _ in range(iterations):
        torch.addmm(spare, averaging, flat, beta=0, out=spare)  # beta 0: spare's old values are not read
        flat, spare = spare, flat
    return flat[:, :channels].t().contiguous().view(channels, height, width)


def dense_crf(
    guide: Tensor,
    probs: Tensor,
    dilations: Sequence[int] = (1, 2, 4, 8),
    iterations: int = 10,
    guide_sigma: float = 0.5,
    spatial_sigma: float = 16.0,
    weight: float = 1.0,
) -> Tensor:
    """Mean-field inference of a dense CRF whose pairwise term lives in dilated windows.

    Unary: ``-log probs``. Pairwise: a Potts model with the bilateral kernel
    ``k_ij = exp(-|p_i - p_j|^2 / 2 spatial_sigma^2 - |g_i - g_j|^2 / 2 guide_sigma^2)`` over
    the dilated 3x3 neighbourhoods of ``dilations``, a sparse stand-in for the fully
    connected kernel of Kraehenbuehl & Koltun. Each iteration::

        Q = softmax(log probs + weight * sum_j k_ij Q_j)

    Args:
        guide: ``[F, H, W]`` float; ``guide_sigma`` is in its units (the default suits
            ImageNet-normalised colours and their :func:`texture_guide`).
        probs: ``[K + 1, H, W]`` summing to 1 over channels.
    Returns:
        ``[K + 1, H, W]`` marginals Q.
    """
    offsets = neighbour_offsets(dilations)
    guide = guide.float()
    kernel = torch.stack(
        [
            torch.exp(-((v - guide) ** 2).sum(dim=0) / (2 * guide_sigma**2) - (dy * dy + dx * dx) / (2 * spatial_sigma**2))
            for v, (dy, dx) in zip(shifted_views(guide, offsets), offsets)
        ]
    )  # [P, H, W]
    unary = probs.clamp(min=1e-8).log()
    q = probs
    for _ in range(iterations):
        message = torch.zeros_like(q)
        for view, k in zip(shifted_views(q, offsets), kernel):
            message.addcmul_(view, k)
        q = (unary + weight * message).softmax(dim=0)
    return q


def refine_scores(
    image: Tensor,
    scores: Tensor,
    *,
    method: str,
    texture_window: int,
    stride: int,
    dilations: Sequence[int],
    iterations: int,
) -> Tensor:
    """Refine an image's ``[K + 1, H, W]`` scores on a grid ``stride`` times coarser.

    The guide, :func:`texture_guide` of ``image`` over ``texture_window``, and the scores are
    average-pooled by the stride, refined there (``method`` ``"pamr"`` or ``"crf"``, its
    ``dilations`` in coarse pixels: a stride of 2 quarters the cost and doubles the reach),
    and the probabilities resized back (bilinear).

    Args:
        image: ``[3, H, W]`` float, the normalised image.
        scores: ``[K + 1, H, W]`` non-negative scores.

    Returns:
        ``[K + 1, H, W]`` probabilities (summing to 1 over channels).
    """
    if method not in ("pamr", "crf"):
        raise ValueError(f"method: must be 'pamr' or 'crf', got {method!r}")
    guide = texture_guide(image, texture_window)
    height, width = scores.shape[-2:]
    if stride > 1:
        guide, scores = mean_pool(guide, stride), mean_pool(scores, stride)
    if method == "pamr":
        refined = pamr(guide, scores, dilations, iterations)
        probs = refined / refined.sum(dim=0, keepdim=True).clamp(min=1e-8)
    else:
        probs = scores / scores.sum(dim=0, keepdim=True).clamp(min=1e-8)
        probs = dense_crf(guide, probs, dilations, iterations)
    if stride > 1:
        probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs
