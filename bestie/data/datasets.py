"""torch datasets over the manifest's records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bestie.data.manifest import ImageRecord
from bestie.data.png import read_label_png
from bestie.data.transforms import normalize, sample_color_jitter, sample_geometric
from bestie.errors import BestieError
from bestie.io import read_image

__all__ = ["ClassificationDataset", "SegmentationDataset", "multi_hot", "pad_collate"]


def multi_hot(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class indices -> [C] float32 with 1 at each index."""
    target = torch.zeros(num_classes)
    target[list(labels)] = 1.0
    return target


class ClassificationDataset(Dataset):
    """Images with their image-level labels, for the multi-label (PAM) classifier.

    Training examples are augmented (random scale in ``scale_range``, a random
    ``crop_size`` crop padded with the mean colour, horizontal flip, colour jitter). The
    randomness of example ``i`` in epoch ``e`` comes from a generator seeded with
    ``(seed, e, i)``, so augmentation does not depend on the number of loader workers;
    call :meth:`set_epoch` before each epoch.

    Evaluation examples (``train=False``) are the images as they are, at their own sizes:
    batch them one at a time, or with :func:`pad_collate` where padding does not matter.

    Items: ``(image [3, H, W] float32 normalised, labels [C] float32 multi-hot)``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        num_classes: int,
        *,
        crop_size: int = 128,
        scale_range: tuple[float, float] = (0.7, 1.3),
        train: bool = True,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = read_image(record.path)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            transform = sample_geometric(rng, image.shape[:2], self.crop_size, self.scale_range)
            image = sample_color_jitter(rng)(transform.apply_image(image))
        return normalize(image), multi_hot(record.labels, self.num_classes)


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], size_divisor: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack images of different sizes by padding them at the bottom and right.

    The padding is 0, the mean colour after normalisation. With ``size_divisor`` = a
    network's output stride, its feature grid covers the padded batch exactly.

    Returns:
        images [B, 3, H, W] with H, W the largest height and width rounded up to a multiple
        of ``size_divisor``; labels [B, C]; sizes [B, 2] int64 (height, width) of each image.
    """
    images, labels = zip(*batch)
    sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.int64)
    height, width = (-(-s // size_divisor) * size_divisor for s in sizes.max(dim=0).values.tolist())
    padded = torch.stack(
        [F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2])) for image in images]
    )
    return padded, torch.stack(labels), sizes


class SegmentationDataset(Dataset):
    """Images with a semantic label map each (``<label_dir>/<name>.png``), augmented for training.

    Keyed ``(index, seed)`` like :class:`~bestie.data.instance_dataset.BestieTrainDataset`: the
    seed fixes the augmentation (random scale in ``scale_range``, a ``crop_size`` crop padded
    with the mean colour and 255 labels, flip, colour jitter), so batches are reproducible and
    training resumes exactly (:func:`bestie.training.iteration_batches`).

    Items: ``{"image": [3, S, S] float32 normalised, "semantic": [S, S] int64 (255 ignore)}``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        label_dir: str | os.PathLike,
        *,
        crop_size: int,
        scale_range: tuple[float, float],
    ) -> None:
        self.records = list(records)
        self.label_dir = Path(label_dir)
        self.crop_size = crop_size
        self.scale_range = scale_range
        missing = [r.name for r in self.records if not (self.label_dir / f"{r.name}.png").is_file()]
        if missing:
            raise BestieError(f"{self.label_dir / missing[0]}.png: label map not found; re-run the wsss stage")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        record = self.records[index]
        rng = np.random.default_rng(seed)
        image = read_image(record.path)
        labels = read_label_png(self.label_dir / f"{record.name}.png")
        transform = sample_geometric(rng, image.shape[:2], self.crop_size, self.scale_range)
        image = sample_color_jitter(rng)(transform.apply_image(image))
        semantic = torch.from_numpy(transform.apply_labels(labels).astype(np.int64))
        return {"image": normalize(image), "semantic": semantic}
