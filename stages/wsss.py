"""DVC stage `wsss`: semantic pseudo labels for every training image (docs/method.md §2).

Class activation maps of the classifier stage's network, restricted to each image's classes
and refined to follow image edges, written as VOC palette PNGs (0 background, c+1 class c,
255 ignore). Where the training split has masks, the maps are scored against them.
With `wsss.source: read` the maps of any WSSS method are read from `wsss.maps_dir` (ID.png,
the same format, checked against the image sizes and the classes) instead, and written and
scored the same way.
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bestie.checkpoint import load_checkpoint
from bestie.classification import classifier_from_checkpoint
from bestie.config import Params
from bestie.data.manifest import Manifest, class_map_path, load_manifest
from bestie.data.png import read_label_png, write_label_png
from bestie.data.precomputed import input_dir, read_label_map
from bestie.data.transforms import normalize
from bestie.io import atomic_dir, read_image, write_metrics
from bestie.metrics.segmentation import SemanticMapTally
from bestie.runtime import select_device
from bestie.stage import add_arguments, run_stage
from bestie.visualize import cam_overlay, colorize_labels, panels
from bestie.wsss import WSSSMaps, semantic_pseudo_labels


def label_maps(params: Params, args: argparse.Namespace, manifest: Manifest) -> Callable:
    """``record -> WSSSMaps``: computed from the classifier's CAMs, or read (``wsss.source``)."""
    cfg = params.wsss
    if cfg.source == "read":
        maps_dir = input_dir(cfg.maps_dir, params.data.root, "wsss.maps_dir")
        return lambda record: WSSSMaps(None, None, torch.from_numpy(read_label_map(
            maps_dir / f"{record.name}.png", manifest.num_classes, (record.height, record.width))))
    device = select_device(args.device)
    checkpoint = load_checkpoint(args.model, kind="pam", class_names=manifest.class_names)
    # The class maps without (or with less) peak suppression than the classifier trained with.
    model = classifier_from_checkpoint(checkpoint, source=args.model, alpha=cfg.alpha).to(device)
    print(f"wsss: on {device}")
    return lambda record: semantic_pseudo_labels(
        model, normalize(read_image(record.path)).to(device),
        torch.tensor(record.labels, dtype=torch.int64, device=device), scales=cfg.scales, flip=cfg.flip,
        bg_threshold=cfg.bg_threshold, background=cfg.background, method=cfg.refine,
        texture_window=cfg.texture_window, stride=cfg.refine_stride, dilations=cfg.dilations,
        iterations=cfg.iterations, min_confidence=cfg.min_confidence,
    )


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.wsss
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    maps_of = label_maps(params, args, manifest)

    tally = SemanticMapTally(manifest.num_classes + 1)
    gallery = {}
    start = time.perf_counter()
    with atomic_dir(args.out, replace=True) as out_dir:
        for record in tqdm(manifest.train, desc="wsss", unit="image", disable=None):
            maps = maps_of(record)
            refined = maps.refined.cpu()
            write_label_png(Path(out_dir) / f"{record.name}.png", refined.numpy())
            if not record.has_masks:
                tally.add(refined)
                continue
            truth = torch.from_numpy(read_label_png(class_map_path(args.prepared, "train", record.name)))
            raw = None if maps.raw is None else maps.raw.cpu()
            tally.add(refined, truth, raw)
            if len(gallery) < cfg.gallery:
                image = read_image(record.path)
                pictures = [image, colorize_labels(refined.numpy()), colorize_labels(truth.numpy())]
                titles = ["image", "refined" if raw is not None else cfg.maps_dir, "ground truth"]
                if raw is not None:
                    pictures[1:1] = [cam_overlay(image, maps.cams.cpu().numpy(), record.labels),
                                     colorize_labels(raw.numpy())]
                    titles[1:1] = ["CAM", "CAM threshold"]
                gallery[record.name] = panels(pictures, titles)
    seconds = time.perf_counter() - start
    with atomic_dir(args.gallery, replace=True) as gallery_dir:
        for name, picture in gallery.items():
            Image.fromarray(picture).save(Path(gallery_dir) / f"{name}.png")

    metrics = tally.metrics(manifest.class_names, raw_cam=cfg.source == "compute")
    write_metrics(args.metrics, metrics)
    raw_cam = f" (raw CAM {metrics['miou_raw_cam']})" if "miou_raw_cam" in metrics else ""
    summary = f"mIoU {metrics.get('miou')}{raw_cam}"
    print(f"wsss: {len(manifest.train)} images ({cfg.source}) in {seconds:.1f} s; {summary}, "
          f"ignore {100 * metrics['ignore_share']:.1f}% of pixels")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, prepared="data/prepared", model="data/models/pam.pt", out="data/wsss",
                  metrics="metrics/wsss.json", gallery="metrics/gallery/wsss", device="auto")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
