"""A tiny in-memory stand-in for the BESTIE training set, keyed like the real one by (index, seed)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from bestie.targets import center_loss_weight, render_targets

NUM_CLASSES = 2
SIZE = 32


class FakeBestieData(Dataset):
    """Two squares of random classes per sample; augmentation noise drawn from the sample seed."""

    def __init__(self, length: int = 6, supervision: str = "cls"):
        self.length = length
        self.supervision = supervision

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        instance_map = torch.zeros(SIZE, SIZE, dtype=torch.long)
        instance_map[4:14, 4:14] = 1
        instance_map[14:26, 12:24] = 2  # touches instance 1: one WSSS component, two objects
        classes = torch.tensor([index % NUM_CLASSES, index % NUM_CLASSES])
        centers = torch.tensor([[8.5, 8.5], [17.5, 19.5]])
        semantic = torch.where(instance_map > 0, classes[0] + 1, 0)
        sample = {
            "image": torch.randn(3, SIZE, SIZE, generator=generator),
            "semantic": semantic,
            **render_targets(instance_map, centers, classes, NUM_CLASSES),
        }
        sample["center_weight"] = center_loss_weight(sample["weight"], sample["semantic"], self.supervision, dense=True)
        if self.supervision == "cls":
            sample["component_map"] = (instance_map > 0).long()
            sample["component_class"] = classes[:1]
        elif self.supervision == "point":
            sample["points"] = centers
            sample["point_classes"] = classes
        return sample
