"""DVC stage `peaks`: instance cues for every training image, and how well they mark the objects.

``supervision: cls``: the peaks of the PAM classifier's class maps (the image's own classes).
``supervision: point`` / ``full``: the dataset's given points, score 1.0.
``peaks.source: read``: any method's peaks from ``peaks.points_dir/ID.txt`` ("x y class_index
score" a line), checked against the image sizes and the classes, whatever the supervision.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from bestie.checkpoint import load_checkpoint
from bestie.classification import classifier_from_checkpoint
from bestie.coco import ground_truth_by_image
from bestie.config import Params
from bestie.data.datasets import ClassificationDataset
from bestie.data.manifest import ImageRecord, Manifest, load_manifest
from bestie.data.precomputed import input_dir, read_point_file
from bestie.errors import BestieError
from bestie.io import atomic_dir, read_json, write_metrics
from bestie.metrics.peaks import peak_statistics
from bestie.peaks import predict_peaks, write_peaks
from bestie.runtime import select_device
from bestie.stage import add_arguments, run_stage


def given_points(records: list[ImageRecord], manifest_path: str) -> list[np.ndarray]:
    """The manifest's point labels as peaks: [K, 4] (x, y, class, 1.0) per image."""
    peaks = []
    for record in records:
        if record.points is None:
            raise BestieError(
                f"{manifest_path}: training image {record.name} has no point labels "
                "(no masks and no Center_points file); supervision point/full needs them"
            )
        peaks.append(np.concatenate([record.points, np.ones((len(record.points), 1), np.float32)], 1))
    return peaks


def classifier_peaks(params: Params, manifest: Manifest, model_path: str, device_name: str) -> list[np.ndarray]:
    checkpoint = load_checkpoint(model_path, kind="pam", class_names=manifest.class_names)
    model = classifier_from_checkpoint(checkpoint, source=model_path)
    images = ClassificationDataset(manifest.train, manifest.num_classes, train=False)
    cfg = params.peaks
    start = time.perf_counter()
    peaks = predict_peaks(
        model, images, [(r.height, r.width) for r in manifest.train],
        batch_size=cfg.batch_size, flip=cfg.flip, device=select_device(device_name),
        smooth_kernel=cfg.smooth_kernel, nms_kernel=cfg.nms_kernel,
        max_per_class=cfg.max_per_class, score_thresh=cfg.score_thresh,
    )
    seconds = time.perf_counter() - start
    print(f"peaks: {len(images)} images in {seconds:.1f} s ({len(images) / seconds:.1f} images/s)")
    return peaks


def read_peaks_dir(params: Params, manifest: Manifest) -> list[np.ndarray]:
    points_dir = input_dir(params.peaks.points_dir, params.data.root, "peaks.points_dir")
    return [
        read_point_file(points_dir / f"{r.name}.txt", manifest.num_classes, (r.height, r.width))
        for r in manifest.train
    ]


def main(params: Params, args: argparse.Namespace) -> None:
    manifest = load_manifest(args.manifest)
    records = list(manifest.train)
    if params.peaks.source == "read":
        peaks = read_peaks_dir(params, manifest)
    elif params.supervision == "cls":
        peaks = classifier_peaks(params, manifest, args.model, args.device)
    else:
        peaks = given_points(records, args.manifest)

    # Measured on the training images that have instance masks.
    gt = ground_truth_by_image(read_json(args.train_gt))
    measured = [i for i, record in enumerate(records) if record.image_id in gt]
    stats = peak_statistics(
        (peaks[i] for i in measured), (gt[records[i].image_id] for i in measured), params.peaks.pseudo_thresh
    )
    with atomic_dir(args.out, replace=True) as tmp:
        write_peaks(Path(tmp) / "peaks.tsv", [r.name for r in records], peaks)
    write_metrics(args.metrics, stats)
    print(
        f"peaks: {stats['num_kept_peaks']} kept peaks on {stats['num_instances']} instances; "
        f"one peak {stats['instances_one_peak']:.3f}, none {stats['instances_no_peak']:.3f}, "
        f"several {stats['instances_multi_peak']:.3f}; precision {stats['peak_precision']:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, manifest="data/prepared/manifest.json", model="data/models/pam.pt",
                  train_gt="data/prepared/train_gt.json", out="data/peaks", metrics="metrics/peaks.json",
                  device="auto")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
