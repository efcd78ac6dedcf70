"""The hot paths of bestie on this machine, as one table.

    python benchmarks/run.py                 # micro-benchmarks (about a minute)
    python benchmarks/run.py --stages        # + each DVC stage's wall time on the current params
                                             #   (re-runs the whole pipeline: minutes)
    python benchmarks/run.py --stages wsss evaluate   # + only these stages' wall times

Prints Markdown tables; asserts nothing. Rows:
- target rendering: center/offset/weight maps of one 128x128 training crop with 5 instances;
- self-refinement: one batch of 8 at 128x128 (image-level and point-level);
- post-processing: network outputs -> instances, one 128x128 image;
- segmentation refinement: the PAMR pass inference runs on the class probabilities before
  post-processing (``inference.seg_refine``), one 128x128 image;
- training iteration: forward + backward + Adam step + self-refinement of the default
  small BESTIE network on a batch of 8 crops of 128x128 (no data loading);
- stages: wall time of `dvc repro --force --single-item STAGE` for every stage, in DAG order,
  their sum, and the peak resident memory of any process they ran;
- then, on one thread, the tables of benchmarks/bench_inference.py: the cases of issue 18's
  published anchor, the segmentation refinement before that issue and now, and whole-image
  inference throughput at 500x375 (small and resnet50 networks).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import print_tables  # noqa: E402
from bench_refine_postprocess import synthetic_batch  # noqa: E402

from bestie.config import SegRefineParams, TrainParams  # noqa: E402
from bestie.inference import refine_segmentation  # noqa: E402
from bestie.losses import BestieCriterion  # noqa: E402
from bestie.models import BestieNet  # noqa: E402
from bestie.postprocess import postprocess  # noqa: E402
from bestie.refine import refine_image_level, refine_point_level  # noqa: E402
from bestie.targets import render_targets  # noqa: E402
from bestie.training import build_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_targets(num_classes: int) -> float:
    rng = np.random.default_rng(0)
    instance_map = torch.zeros(128, 128, dtype=torch.long)
    for k in range(1, 6):
        y, x = rng.integers(10, 100, size=2)
        instance_map[y : y + 24, x : x + 24] = k
    centers = torch.from_numpy(rng.uniform(0, 128, size=(5, 2)).astype(np.float32))
    classes = torch.from_numpy(rng.integers(0, num_classes, size=5))
    return median_ms(lambda: render_targets(instance_map, centers, classes, num_classes), 50)


def bench_refine_and_postprocess(num_classes: int) -> dict[str, float]:
    data = synthetic_batch(8, 128, num_classes)
    image_level = median_ms(lambda: refine_image_level(
        data["center"], data["offset"], data["seg"].softmax(1), data["component_map"],
        data["component_class"], num_classes), 20)
    point_level = median_ms(lambda: refine_point_level(
        data["offset"], data["semantic"], data["points_xy"], data["point_classes"], num_classes), 20)
    post = median_ms(lambda: postprocess(data["seg"][0], data["center"][0], data["offset"][0],
                                         image_size=(128, 128)), 30)
    image = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(0))
    refine = SegRefineParams()
    seg_refine = median_ms(lambda: refine_segmentation(
        image, data["seg"][0], iterations=refine.iterations, texture_window=refine.texture_window,
        stride=refine.stride, dilations=refine.dilations), 20)
    return {"refine_image": image_level, "refine_point": point_level, "postprocess": post, "seg_refine": seg_refine}


def training_step(num_classes: int, backbone: str, batch_size: int, crop_size: int) -> Callable[[], None]:
    """One training iteration of BESTIE (forward, losses with self-refinement, backward, Adam step)
    at the default train params, on a synthetic batch (no data loading)."""
    torch.manual_seed(0)
    params = TrainParams()
    model = BestieNet(num_classes, backbone, bn_momentum=params.bn_momentum)
    optimizer = build_optimizer("adam", model.parameters(), params.lr, params.weight_decay)
    criterion = BestieCriterion(
        "cls", num_classes, seg_weight=params.seg_weight, center_weight=params.center_weight,
        offset_weight=params.offset_weight, hard_pixel_ratio=params.hard_pixel_ratio, refine_from=0,
        refine_thresh=params.refine_thresh, refine_nms_kernel=params.refine_nms_kernel,
        refine_max_instances=params.refine_max_instances, sigma=params.sigma,
    )
    data = synthetic_batch(batch_size, crop_size, num_classes)
    batch = {
        "image": torch.randn(batch_size, 3, crop_size, crop_size),
        "semantic": data["semantic"],
        "center": data["center"],
        "offset": data["offset"],
        "weight": (data["semantic"] > 0).float()[:, None],
        "center_weight": (data["semantic"] > 0).float()[:, None],
        "component_map": data["component_map"],
        "component_class": data["component_class"],
    }

    def step() -> None:
        losses = criterion(model(batch["image"]), batch, iteration=0)  # self-refinement included
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    return step


def bench_training_iteration(num_classes: int) -> float:
    params = TrainParams()
    return median_ms(training_step(num_classes, params.backbone, 8, params.crop_size), 10)


def bench_stages(stages: list[str]) -> list[tuple[str, float]]:
    """Each stage's wall time, forced to re-run alone."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    rows = []
    for stage in stages:
        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "--force", "--single-item", stage], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        rows.append((stage, time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=6, help="number of classes (6: the embedded data)")
    parser.add_argument("--stages", nargs="*", metavar="STAGE",
                        help="also time these DVC stages, every one if none is named (slow)")
    args = parser.parse_args()
    every_stage = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    if args.stages and not set(args.stages) <= set(every_stage):
        parser.error(f"--stages: unknown {sorted(set(args.stages) - set(every_stage))}; the stages are {every_stage}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| hot path | time |")
    print("|---|---|")
    print(f"| target rendering, one 128x128 crop, 5 instances | {1000 * bench_targets(args.classes):.0f} us |")
    speeds = bench_refine_and_postprocess(args.classes)
    print(f"| self-refinement, image-level, batch of 8 at 128x128 | {speeds['refine_image']:.1f} ms |")
    print(f"| self-refinement, point-level, batch of 8 at 128x128 | {speeds['refine_point']:.1f} ms |")
    print(f"| post-processing, one 128x128 image | {speeds['postprocess']:.1f} ms |")
    print(f"| segmentation refinement before it (`inference.seg_refine`), one 128x128 image | "
          f"{speeds['seg_refine']:.1f} ms |")
    iteration = bench_training_iteration(args.classes)
    print(f"| training iteration, batch 8 at 128x128 (small net) | {iteration:.0f} ms ({1000 / iteration:.2f} it/s) |")
    if args.stages is not None:
        rows = bench_stages([s for s in every_stage if not args.stages or s in args.stages])
        for stage, seconds in rows:
            print(f"| stage `{stage}` | {seconds:.1f} s |")
        if not args.stages:
            print(f"| whole pipeline (sum of the stages) | {sum(s for _, s in rows) / 60:.1f} min |")
        # ru_maxrss of waited-for children: the largest resident set of any one process (KiB on Linux).
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"| peak memory of a stage process | {peak:.2f} GiB |")
    torch.set_num_threads(1)
    print(f"\nInference at VOC size, one thread (load average {os.getloadavg()[0]:.1f}):\n")
    print_tables(repeat=5)


if __name__ == "__main__":
    main()
