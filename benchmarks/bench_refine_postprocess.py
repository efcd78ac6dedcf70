"""Speed of self-refinement and post-processing on synthetic network outputs.

    python benchmarks/bench_refine_postprocess.py [--batch 8] [--size 128] [--classes 20]

Targets on this CPU at 128 px: refinement of a batch of 8 < 36 ms,
post-processing < 5.8 ms per image. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bestie.postprocess import postprocess
from bestie.refine import refine_image_level, refine_point_level
from bestie.spatial import class_components
from bestie.targets import center_heatmap

TARGET_MS = {"refine_image_level (batch)": 36.0, "postprocess (per image)": 5.8}


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """Outputs of a network that sees 1-3 classes per image, 1-4 disc-shaped objects each.

    Objects of a class may touch, so WSSS components hold several objects; the center maps
    peak at the object centers and the offsets point at them, both with noise.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    semantic = np.zeros((batch, size, size), np.uint8)
    offset = np.zeros((batch, 2, size, size), np.float32)
    center = torch.zeros(batch, num_classes, size, size)
    points_xy, point_classes = [], []
    for b in range(batch):
        best = np.full((size, size), np.inf, np.float32)
        centers, classes = [], []
        for cls in rng.choice(num_classes, size=rng.integers(1, 4), replace=False):
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.uniform(0.15, 0.85, 2) * size
                radius = rng.uniform(0.08, 0.18) * size
                dist = np.hypot(ys - cy, xs - cx)
                inside = (dist < radius) & (dist < best)
                best[inside] = dist[inside]
                semantic[b][inside] = cls + 1
                offset[b, 0][inside] = cy - ys[inside]
                offset[b, 1][inside] = cx - xs[inside]
                centers.append((cx, cy))
                classes.append(int(cls))
        centers_t = torch.tensor(centers, dtype=torch.float32)
        classes_t = torch.tensor(classes)
        center[b] = center_heatmap(centers_t.round(), classes_t, num_classes, (size, size))
        points_xy.append(centers_t)
        point_classes.append(classes_t)
    center += 0.05 * torch.rand_like(center)
    offset_t = torch.from_numpy(offset) + torch.randn(batch, 2, size, size)
    logits = 2.0 * torch.randn(batch, num_classes + 1, size, size)
    labels = torch.from_numpy(semantic).long()[:, None]
    logits.scatter_add_(1, labels, torch.full((batch, 1, size, size), 8.0))

    components = [class_components(semantic[b], range(num_classes), min_size=50) for b in range(batch)]
    max_k = max(1, max(len(c) for _, c in components))
    component_map = torch.from_numpy(np.stack([m for m, _ in components])).long()
    component_class = torch.full((batch, max_k), -1, dtype=torch.long)
    for b, (_, cls) in enumerate(components):
        component_class[b, : len(cls)] = torch.from_numpy(cls)
    max_p = max(len(p) for p in points_xy)
    points = torch.zeros(batch, max_p, 2)
    points_cls = torch.full((batch, max_p), -1, dtype=torch.long)
    for b, (p, c) in enumerate(zip(points_xy, point_classes)):
        points[b, : len(p)], points_cls[b, : len(c)] = p, c
    return {
        "seg": logits,
        "center": center,
        "offset": offset_t,
        "semantic": torch.from_numpy(semantic).long(),
        "component_map": component_map,
        "component_class": component_class,
        "points_xy": points,
        "point_classes": points_cls,
    }


def timeit(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(median wall, min wall, median process CPU) time in ms over ``repeat`` runs.

    On a shared machine the wall time includes waiting for a core; the CPU time does not
    (it sums all threads, though).
    """
    for _ in range(2):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = synthetic_batch(args.batch, args.size, args.classes)
    num_classes, batch = args.classes, args.batch
    seg_prob = data["seg"].softmax(1)
    image_size = (args.size, args.size)
    larger = (round(args.size * 1.5), round(args.size * 1.25))

    def refine_image() -> None:
        refine_image_level(
            data["center"],
            data["offset"],
            seg_prob,
            data["component_map"],
            data["component_class"],
            num_classes,
        )

    def refine_points() -> None:
        refine_point_level(
            data["offset"], data["semantic"], data["points_xy"], data["point_classes"], num_classes
        )

    def post_each(size: tuple[int, int], guided: bool = False) -> None:
        for b in range(batch):
            points = (data["points_xy"][b], data["point_classes"][b]) if guided else None
            postprocess(
                data["seg"][b], data["center"][b], data["offset"][b], image_size=size, points=points
            )

    rows = [
        ("refine_image_level (batch)", refine_image, 1),
        ("refine_point_level (batch)", refine_points, 1),
        ("postprocess (per image)", lambda: post_each(image_size), batch),
        (f"postprocess to {larger[0]}x{larger[1]} (per image)", lambda: post_each(larger), batch),
        ("postprocess, point-guided (per image)", lambda: post_each(image_size, True), batch),
    ]
    print(
        f"batch {batch}, {args.size}x{args.size}, {num_classes} classes, "
        f"{int((data['component_class'] >= 0).sum())} components, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'operation':<42} {'median ms':>10} {'min ms':>8} {'cpu ms':>8} {'target ms':>10}")
    for name, fn, per in rows:
        median, best, cpu = timeit(fn, args.repeat)
        target = TARGET_MS.get(name)
        target_text = f"{target:>10.1f}" if target else f"{'':>10}"
        print(
            f"{name:<42} {median / per:>10.2f} {best / per:>8.2f} {cpu / per:>8.2f} {target_text}"
        )


if __name__ == "__main__":
    main()
