"""How well peak points mark the ground-truth instances (the ``peaks`` stage)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["peak_statistics"]


def peak_statistics(
    peaks: Iterable[np.ndarray],
    ground_truth: Iterable,
    pseudo_thresh: float,
) -> dict[str, float]:
    """How well peaks above ``pseudo_thresh`` ("kept") mark the ground-truth instances.

    A kept peak *hits* an instance when it lies on one of the instance's pixels and has its
    class. Void (255) pixels belong to no instance.

    Args:
        peaks: per image, [K, 4] (x, y, class, score); images are read one at a time, so both
            may be generators (memory does not grow with the split).
        ground_truth: per image, an object with ``masks`` [N, H, W] bool and ``classes`` [N]
            (e.g. :class:`bestie.structures.GroundTruth`).
        pseudo_thresh: peaks with score > this are kept.
    Returns:
        ``peak_precision``: share of kept peaks that hit an instance;
        ``instances_one_peak`` / ``instances_no_peak`` / ``instances_multi_peak``: share of
        instances hit by exactly one, no, two or more kept peaks; and the counts
        ``num_images``, ``num_instances``, ``num_peaks``, ``num_kept_peaks``. Shares of an
        empty set are 0.
    """
    num_images = num_peaks = num_kept = num_inside = 0
    hits_per_instance = []
    for image_peaks, gt in zip(peaks, ground_truth, strict=True):  # ValueError on unequal lengths
        image_peaks = np.asarray(image_peaks, dtype=np.float32).reshape(-1, 4)
        kept = image_peaks[image_peaks[:, 3] > pseudo_thresh]
        masks = np.asarray(gt.masks, dtype=bool)
        height, width = masks.shape[1:]
        x = np.clip(np.rint(kept[:, 0]).astype(np.int64), 0, width - 1)
        y = np.clip(np.rint(kept[:, 1]).astype(np.int64), 0, height - 1)
        same_class = np.asarray(gt.classes)[:, None] == kept[None, :, 2].astype(np.int64)
        hits = masks[:, y, x] & same_class  # [N, K]
        num_images += 1
        num_peaks += len(image_peaks)
        num_kept += len(kept)
        num_inside += int(hits.any(axis=0).sum())
        hits_per_instance.append(hits.sum(axis=1))
    hits = np.concatenate(hits_per_instance) if hits_per_instance else np.zeros(0, dtype=np.int64)
    share = lambda n, total: float(n) / total if total else 0.0  # noqa: E731
    return {
        "peak_precision": share(num_inside, num_kept),
        "instances_one_peak": share((hits == 1).sum(), len(hits)),
        "instances_no_peak": share((hits == 0).sum(), len(hits)),
        "instances_multi_peak": share((hits >= 2).sum(), len(hits)),
        "num_images": num_images,
        "num_instances": len(hits),
        "num_peaks": num_peaks,
        "num_kept_peaks": num_kept,
    }
