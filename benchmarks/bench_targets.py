"""Time `render_targets` (and the augmentation of a pseudo label) per image; prints a table.

    python benchmarks/bench_targets.py [--repeats 200]

Random box instances, 20 classes, sigma 6. Timings are wall-clock medians; on a GPU the
device is synchronised around each call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bestie.data.transforms import GeometricTransform
from bestie.targets import render_targets

NUM_CLASSES = 20


def _scene(size: int, num_instances: int, rng: np.random.Generator):
    """[S, S] instance map of random boxes, [N, 2] centers, [N] classes (numpy)."""
    instance_map = np.zeros((size, size), np.int64)
    for k in range(num_instances):
        h, w = rng.integers(size // 8, size // 3, size=2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        instance_map[y0:y0 + h, x0:x0 + w] = k + 1
    centers = rng.uniform(0, size, size=(num_instances, 2)).astype(np.float32)
    classes = rng.integers(0, NUM_CLASSES, size=num_instances)
    return instance_map, centers, classes


def _median_us(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _row(function: str, device: str, size: int, num_instances: int, us: float) -> None:
    print(f"{function:<20} {device:<6} {f'{size}x{size}':>8} {num_instances:>9} {us:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a data-loader worker's budget
    rng = np.random.default_rng(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])

    print(f"{'function':<20} {'device':<6} {'size':>8} {'instances':>9} {'us/image':>10}")
    for device in devices:
        for size, num_instances in [(128, 5), (256, 10), (512, 5), (512, 50)]:
            instance_map, centers, classes = _scene(size, num_instances, rng)
            tensors = [torch.from_numpy(a).to(device) for a in (instance_map, centers, classes)]
            us = _median_us(lambda: render_targets(*tensors, NUM_CLASSES), args.repeats, device)
            _row("render_targets", device.type, size, num_instances, us)
    for size, num_instances in [(128, 5), (512, 50)]:
        instance_map, centers, _ = _scene(size, num_instances, rng)
        crop = (10, 10, 10 + int(size * 0.9), 10 + int(size * 0.9))
        transform = GeometricTransform((size, size), 1.2, crop, True)

        def augment(transform=transform, instance_map=instance_map, centers=centers):
            # What the training data loader does to a pseudo label.
            return transform.apply_labels(instance_map, fill=0), transform.apply_points(centers)

        us = _median_us(augment, args.repeats, torch.device("cpu"))
        _row("augment instances", "cpu", size, num_instances, us)


if __name__ == "__main__":
    main()
