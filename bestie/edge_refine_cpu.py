"""PAMR's affinity on the CPU as one fused kernel (numba), for :func:`bestie.edge_refine.pamr_affinity`.

The tensor version makes about a thousand passes over image-sized arrays (a difference, a
product and a sum per neighbour and guide channel, the window statistics, the softmax), each
bound by memory traffic. Here one pass over the image does it all, a row at a time, with
every row-sized buffer in cache and each inner loop over the row's pixels vectorised;
only the softmax's exponentials and sums are left to torch.
Same arithmetic, another summation order: weights equal the tensor version's to float32
rounding (``tests/test_edge_refine.py``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, boundscheck=False, fastmath=True)
def pamr_logits_kernel(padded: np.ndarray, reach: int, offsets: np.ndarray, temperature: float,
                       out: np.ndarray) -> None:
    """Fill ``out`` with the logits of each pixel's softmax over its neighbours (see
    ``pamr_affinity``), less the pixel's largest: ``exp`` and normalise to get the weights.

    Args:
        padded: ``[F, H + 2 reach, W + 2 reach]`` float32, the guide with its border
            replicated by ``reach`` (the largest offset).
        offsets: ``[P, 2]`` int64 (dy, dx), ``neighbour_offsets`` order.
        temperature: float32.
        out: ``[H * W, P]`` float32.
    """
    channels, padded_height, padded_width = padded.shape
    height, width = padded_height - 2 * reach, padded_width - 2 * reach
    num_offsets = offsets.shape[0]
    count = np.float32(num_offsets + 1)  # the window: the pixel and its neighbours
    unbiased = np.float32((num_offsets + 1) / num_offsets)
    total = np.empty(width, np.float32)
    squares = np.empty(width, np.float32)
    neg_scale = np.empty((channels, width), np.float32)
    logits = np.empty((num_offsets, width), np.float32)
    peak = np.empty(width, np.float32)
    for y in range(height):
        row = y + reach
        # -1 / (F * temperature * std_f(i)) for each channel f: its standard deviation over the window.
        for f in range(channels):
            centre = padded[f, row, reach : reach + width]
            for x in range(width):
                total[x] = centre[x]
                squares[x] = centre[x] * centre[x]
            for p in range(num_offsets):
                left = reach + offsets[p, 1]
                neighbour = padded[f, row + offsets[p, 0], left : left + width]
                for x in range(width):
                    total[x] += neighbour[x]
                    squares[x] += neighbour[x] * neighbour[x]
            for x in range(width):
                mean = total[x] / count
                variance = max(squares[x] / count - mean * mean, np.float32(0))
                spread = np.sqrt(variance * unbiased)
                neg_scale[f, x] = np.float32(-1) / (np.float32(channels) * (temperature * spread + np.float32(1e-8)))
        # -mean_f |g_f(i) - g_f(j)| / (temperature * std_f(i)) for each neighbour j.
        for p in range(num_offsets):
            logit = logits[p]
            logit[:] = 0
            left = reach + offsets[p, 1]
            for f in range(channels):
                centre = padded[f, row, reach : reach + width]
                neighbour = padded[f, row + offsets[p, 0], left : left + width]
                scale = neg_scale[f]
                for x in range(width):
                    logit[x] += abs(neighbour[x] - centre[x]) * scale[x]
        # Less their maximum, written pixel-major; the caller takes the softmax's exponentials
        # (numba's exp is scalar here, torch's vectorised).
        peak[:] = logits[0]
        for p in range(1, num_offsets):
            for x in range(width):
                peak[x] = max(peak[x], logits[p, x])
        for x in range(width):
            pixel = out[y * width + x]
            for p in range(num_offsets):
                pixel[p] = logits[p, x] - peak[x]
