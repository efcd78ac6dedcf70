"""Inference at VOC size: the cases of issue 18's published anchor, the segmentation refinement
against its version before that issue, and whole-image throughput.

    python benchmarks/bench_inference.py [--repeat 5]     # also a part of benchmarks/run.py

Every figure is CPU time of one thread (``time.process_time``), the median of calls made in turn
(each case's variants interleaved, so machine load hits them alike). The network outputs are
synthetic (:func:`bench_refine_postprocess.synthetic_batch`, 20 classes as VOC); the image that
guides the refinement and that the networks see is the 500x375 VOC image of the test fixtures.
Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refine_before  # noqa: E402
from bench_refine_postprocess import synthetic_batch  # noqa: E402

from bestie.config import SegRefineParams  # noqa: E402
from bestie.data.transforms import normalize  # noqa: E402
from bestie.edge_refine import pamr  # noqa: E402
from bestie.inference import network_outputs, refine_segmentation  # noqa: E402
from bestie.io import read_image  # noqa: E402
from bestie.models import BestieNet  # noqa: E402
from bestie.postprocess import postprocess  # noqa: E402
from bestie.refine import refine_image_level, refine_point_level  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOC_IMAGE = REPO / "tests" / "fixtures" / "voc" / "JPEGImages" / "2007_000063.jpg"  # 500x375
VOC_CLASSES = 20

# Issue 18: published code / this project, one thread, same inputs, calls interleaved, the
# published code given a separable max pool (same values); measured at d230219.
PUBLISHED_OVER_PROJECT = {
    "refine_image": "9-11x",
    "refine_point": "22x",
    "small_off": "4.7x",
    "small_on": "0.7x",
    "voc_off": "14x",
    "voc_on": "1.2x",
}


def interleaved_ms(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median CPU time (ms) of each function, the functions called in turn ``repeat`` times."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(1000 * (time.process_time() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def outputs_case(height: int, width: int, num_classes: int) -> dict:
    """Synthetic network outputs at (height, width) and the fixture image cut to that size."""
    data = synthetic_batch(1, max(height, width), num_classes)
    image = normalize(read_image(VOC_IMAGE))[:, :height, :width]
    return {"image": image, **{k: data[k][0, ..., :height, :width].contiguous() for k in ("seg", "center", "offset")}}


def outputs_to_instances(case: dict, refine: Callable | None) -> Callable[[], object]:
    """Network outputs -> instances at default settings, with ``refine`` (a
    ``refine_segmentation``) or without segmentation refinement."""
    settings = SegRefineParams()

    def run() -> object:
        seg = case["seg"]
        if refine is not None:
            seg = refine(case["image"], seg, iterations=settings.iterations, texture_window=settings.texture_window,
                         stride=settings.stride, dilations=settings.dilations)
        return postprocess(seg, case["center"], case["offset"], image_size=tuple(seg.shape[-2:]))

    return run


def anchor_cases(repeat: int, num_classes: int = VOC_CLASSES) -> list[tuple[str, str, float, float | None]]:
    """(key, case, time now, time with the refinement of d230219 or None) for issue 18's cases."""
    batch = synthetic_batch(8, 128, num_classes)
    self_refine = interleaved_ms({
        "refine_image": lambda: refine_image_level(
            batch["center"], batch["offset"], batch["seg"].softmax(1), batch["component_map"],
            batch["component_class"], num_classes),
        "refine_point": lambda: refine_point_level(
            batch["offset"], batch["semantic"], batch["points_xy"], batch["point_classes"], num_classes),
    }, 3 * repeat)
    rows = [
        ("refine_image", "self-refinement, image-level, batch 8 at 128 px", self_refine["refine_image"], None),
        ("refine_point", "self-refinement, point-level, batch 8 at 128 px", self_refine["refine_point"], None),
    ]
    for key, (height, width), label in (("small", (135, 135), "one 135x135 image"), ("voc", (375, 500), "one 500x375 image")):
        case = outputs_case(height, width, num_classes)
        times = interleaved_ms({
            "off": outputs_to_instances(case, None),
            "on": outputs_to_instances(case, refine_segmentation),
            "on_before": outputs_to_instances(case, refine_before.refine_segmentation),
        }, repeat)
        rows.append((f"{key}_off", f"outputs -> instances, {label}, `seg_refine` off", times["off"], None))
        rows.append((f"{key}_on", f"outputs -> instances, {label}, `seg_refine` on (default)", times["on"], times["on_before"]))
    return rows


def refinement_speedup(repeat: int, num_classes: int = VOC_CLASSES) -> list[tuple[str, float, float]]:
    """(what, time before issue 18, time now) of PAMR alone and of the whole refinement at 500x375."""
    case = outputs_case(375, 500, num_classes)
    settings = SegRefineParams()
    guide = F.avg_pool2d(refine_before.texture_guide(case["image"], settings.texture_window)[None], settings.stride,
                         ceil_mode=True)[0]
    scores = F.avg_pool2d(case["seg"].softmax(0)[None], settings.stride, ceil_mode=True)[0]
    kwargs = dict(iterations=settings.iterations, texture_window=settings.texture_window, stride=settings.stride,
                  dilations=settings.dilations)
    times = interleaved_ms({
        "pamr_before": lambda: refine_before.pamr(guide, scores, settings.dilations, settings.iterations),
        "pamr": lambda: pamr(guide, scores, settings.dilations, settings.iterations),
        "refine_before": lambda: refine_before.refine_segmentation(case["image"], case["seg"], **kwargs),
        "refine": lambda: refine_segmentation(case["image"], case["seg"], **kwargs),
    }, repeat)
    height, width = scores.shape[-2:]
    return [
        (f"PAMR on the {width}x{height} refinement grid, {len(scores)} channels", times["pamr_before"], times["pamr"]),
        ("the whole refinement (`refine_segmentation`), 500x375", times["refine_before"], times["refine"]),
    ]


def throughput(repeat: int, outputs_ms: float, num_classes: int = VOC_CLASSES) -> list[tuple[str, float, float]]:
    """(backbone, network ms, images/s) for a 500x375 image: the network run twice (``flip``, the
    default) plus ``outputs_ms`` for outputs -> instances."""
    image = read_image(VOC_IMAGE)
    rows = []
    for backbone in ("small", "resnet50"):
        torch.manual_seed(0)
        model = BestieNet(num_classes, backbone, pretrained=False).eval()
        network_ms = interleaved_ms({"net": lambda: network_outputs(model, image, torch.device("cpu"), flip=True)},
                                    max(2, repeat // 2))["net"]
        rows.append((backbone, network_ms, 1000 / (network_ms + outputs_ms)))
    return rows


def print_tables(repeat: int) -> None:
    print("| case (one thread, CPU time) | this project | published / this project, measured in issue 18 at d230219 | "
          "the same, carried to today by this run's before / now |")
    print("|---|---|---|---|")
    voc_on = None
    for key, case, now, before in anchor_cases(repeat):
        if before is not None:
            carried = f"{float(PUBLISHED_OVER_PROJECT[key][:-1]) * before / now:.1f}x"
        else:  # self-refinement is unchanged; post-processing only lost work (class_components)
            carried = "unchanged" if key.startswith("refine") else "at least as before"
        before_text = "" if before is None else f" ({before:.1f} ms with the d230219 refinement)"
        print(f"| {case} | {now:.1f} ms{before_text} | {PUBLISHED_OVER_PROJECT[key]} | {carried} |")
        if key == "voc_on":
            voc_on = now
    print("\n| segmentation refinement, 500x375, default `inference.seg_refine` | before (d230219) | now | speed-up |")
    print("|---|---|---|---|")
    for what, before, now in refinement_speedup(repeat):
        print(f"| {what} | {before:.1f} ms | {now:.1f} ms | {before / now:.1f}x |")
    print("\n| whole-image inference, 500x375, one thread | network (2 passes: `flip`) | outputs -> instances | images/s |")
    print("|---|---|---|---|")
    for backbone, network_ms, per_second in throughput(repeat, voc_on):
        total = network_ms + voc_on
        print(f"| `{backbone}` | {network_ms:.0f} ms ({100 * network_ms / total:.0f} %) | "
              f"{voc_on:.0f} ms ({100 * voc_on / total:.0f} %) | {per_second:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved calls of each variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print_tables(args.repeat)


if __name__ == "__main__":
    main()
