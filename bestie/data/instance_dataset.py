"""Training samples of the BESTIE network: augmented image, semantic map and rendered targets.

A sample is keyed by ``(index, seed)``: the seed fixes its augmentation, so a batch is a
pure function of the sampler's plan and training resumes exactly (see ``bestie.training``).
Targets are rendered after the augmentation from the transformed instance map and centers,
so their geometry is exact (docs/method.md §3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bestie.data.manifest import ImageRecord, class_map_path
from bestie.data.png import read_label_png
from bestie.data.transforms import normalize, sample_color_jitter, sample_geometric
from bestie.errors import BestieError
from bestie.io import read_image
from bestie.pseudo_labels import load_pseudo_label, load_records
from bestie.spatial import class_components
from bestie.targets import center_loss_weight, render_targets

__all__ = ["BestieTrainDataset", "collate_samples"]


class BestieTrainDataset(Dataset):
    """The training split with its semantic maps and pseudo instances.

    Args:
        records: the training split's manifest records (image paths, labels, points).
        supervision: "cls", "point" or "full".
        num_classes: C.
        semantic_dir: WSSS maps (``<name>.png``); unused with ``full``, which trains on the
            ground-truth class maps of ``prepared``.
        prepared: the ``prepare`` stage output.
        pseudo_dir: the ``pseudo_labels`` stage output.
        crop_size: side of the square training crops.
        scale_range: (min, max) of the random rescaling.
        sigma: Gaussian sigma of the rendered centers, in pixels.
        dense_center_loss: see :func:`bestie.targets.center_loss_weight`.
        min_size: smallest WSSS component self-refinement works in.

    A sample is a dict of tensors:
        image [3, S, S] float; semantic [S, S] long (255 ignore); center [C, S, S];
        offset [2, S, S]; weight [1, S, S] (offset loss); center_weight [1, S, S] (center
        loss, see :func:`bestie.targets.center_loss_weight`); with ``cls``: component_map
        [S, S] long and component_class [K] long; with ``point``: points [P, 2] (x, y) and
        point_classes [P].
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        supervision: str,
        num_classes: int,
        semantic_dir: str | os.PathLike,
        pseudo_dir: str | os.PathLike,
        prepared: str | os.PathLike,
        *,
        crop_size: int,
        scale_range: tuple[float, float],
        sigma: float,
        dense_center_loss: bool,
        min_size: int,
    ):
        self.prepared = Path(prepared)
        self.records = list(records)
        self.supervision = supervision
        self.num_classes = num_classes
        self.semantic_dir = Path(semantic_dir)
        self.pseudo_dir = Path(pseudo_dir)
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.sigma = sigma
        self.dense_center_loss = dense_center_loss
        self.min_size = min_size
        self.pseudo_records = load_records(pseudo_dir)
        missing = [r.name for r in self.records if r.name not in self.pseudo_records]
        if missing:
            raise BestieError(f"{self.pseudo_dir}: no pseudo label for image {missing[0]}; re-run pseudo_labels")
        if supervision == "point" and any(r.points is None for r in self.records):
            raise BestieError("supervision point: some training images have no point labels")

    def __len__(self) -> int:
        return len(self.records)

    def _semantic_map(self, record: ImageRecord) -> np.ndarray:
        if self.supervision == "full":
            return read_label_png(class_map_path(self.prepared, "train", record.name))
        path = self.semantic_dir / f"{record.name}.png"
        if not path.is_file():
            raise BestieError(f"{path}: WSSS map not found; re-run the wsss and wsss_network stages")
        return read_label_png(path)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        record = self.records[index]
        rng = np.random.default_rng(seed)
        image = read_image(record.path)
        semantic = self._semantic_map(record)
        pseudo = load_pseudo_label(self.pseudo_dir, record.name, self.pseudo_records[record.name])

        transform = sample_geometric(rng, image.shape[:2], self.crop_size, self.scale_range)
        image = sample_color_jitter(rng)(transform.apply_image(image))
        semantic = transform.apply_labels(semantic)
        instance_map = transform.apply_labels(pseudo.instance_map, fill=0)
        centers = transform.apply_points(pseudo.centers)

        extra = {}
        if self.supervision == "point":
            # Every given point is drawn on the center map, also in rejected components.
            points = transform.apply_points(record.points[:, :2])
            point_classes = torch.from_numpy(record.points[:, 2].astype(np.int64))
            extra = {"extra_centers_xy": torch.from_numpy(points), "extra_classes": point_classes}
        targets = render_targets(
            torch.from_numpy(instance_map.astype(np.int64)),
            torch.from_numpy(centers),
            torch.from_numpy(pseudo.classes),
            self.num_classes,
            sigma=self.sigma,
            **extra,
        )
        semantic_labels = torch.from_numpy(semantic.astype(np.int64))
        targets["center_weight"] = center_loss_weight(
            targets["weight"], semantic_labels, self.supervision, self.dense_center_loss
        )
        sample = {"image": normalize(image), "semantic": semantic_labels, **targets}
        if self.supervision == "cls":
            # The WSSS components refinement works in, of the augmented map.
            component_map, component_class = class_components(semantic, record.labels, min_size=self.min_size)
            sample["component_map"] = torch.from_numpy(component_map.astype(np.int64))
            sample["component_class"] = torch.from_numpy(component_class.astype(np.int64))
        elif self.supervision == "point":
            sample["points"] = extra["extra_centers_xy"]
            sample["point_classes"] = extra["extra_classes"]
        return sample


def _pad_stack(tensors: list[torch.Tensor], fill: float) -> torch.Tensor:
    """Stack [K_i, ...] tensors into [B, max K_i, ...], padding with ``fill``."""
    longest = max((len(t) for t in tensors), default=0)
    out = tensors[0].new_full((len(tensors), longest, *tensors[0].shape[1:]), fill)
    for i, tensor in enumerate(tensors):
        out[i, : len(tensor)] = tensor
    return out


def collate_samples(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack same-size tensors; pad per-sample lists (components, points) with -1 classes."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in ("component_class", "point_classes"):
            batch[key] = _pad_stack(values, -1)
        elif key == "points":
            batch[key] = _pad_stack(values, 0.0)
        else:
            batch[key] = torch.stack(values)
    return batch
