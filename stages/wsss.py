"""DVC stage `wsss`: semantic pseudo labels for every training image (METHOD.md section 2).

Class activation maps of the classifier stage's network, restricted to each image's classes
and refined to follow image edges, written as VOC palette PNGs (0 background, c+1 class c,
255 ignore). Where the training split has masks, the maps are scored against them.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bestie.cam import confusion_matrix, iou_per_class
from bestie.checkpoint import load_checkpoint
from bestie.classification import classifier_from_checkpoint
from bestie.config import Params
from bestie.data.manifest import load_manifest
from bestie.data.png import voc_palette, write_label_png
from bestie.data.transforms import normalize
from bestie.data.voc import VOCDataset
from bestie.io import atomic_dir, write_metrics
from bestie.models.pam import PeakAttention
from bestie.runtime import select_device
from bestie.stage import run_stage
from bestie.visualize import colorize_labels, panels
from bestie.wsss import semantic_pseudo_labels

_PALETTE = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)


def cam_overlay(image: np.ndarray, cams: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Tint each pixel toward its strongest class's VOC colour, as strongly as that CAM is high.

    Args:
        image: [H, W, 3] uint8; cams: [K, H, W] in [0, 1]; classes: the K class indices.
    Returns:
        [H, W, 3] uint8.
    """
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.5
    if not classes:
        return grey.astype(np.uint8)
    strength, winner = (t.cpu().numpy() for t in cams.max(dim=0))
    colour = _PALETTE[np.asarray(classes)[winner] + 1]
    alpha = strength[..., None]
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def _miou(confusion: torch.Tensor) -> float:
    return 100 * iou_per_class(confusion).nanmean().item()


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.wsss
    manifest = load_manifest(args.manifest)
    device = select_device(args.device)
    # One image at a time is too little work to share: a second CPU thread only adds
    # synchronisation (measured 3-8x slower whenever another process holds the other core).
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.model, kind="pam", class_names=manifest.class_names)
    model = classifier_from_checkpoint(checkpoint, source=args.model).to(device)
    model.pam = PeakAttention(cfg.alpha)  # the class maps without (or with less) peak suppression
    voc = VOCDataset(params.data.root, params.data.train_split)

    num_labels = manifest.num_classes + 1
    raw_confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)
    refined_confusion = torch.zeros_like(raw_confusion)
    background_confusion = torch.zeros_like(raw_confusion)  # ignore counted as background
    ignored = total = evaluated = 0
    gallery = {}
    start = time.perf_counter()
    with atomic_dir(args.out, replace=True) as out_dir:
        for record in tqdm(manifest.train, desc="wsss", unit="image", disable=None):
            image = voc.read_image(record.name)
            classes = torch.tensor(record.labels, dtype=torch.int64, device=device)
            maps = semantic_pseudo_labels(
                model, normalize(image).to(device), classes, scales=cfg.scales, flip=cfg.flip,
                bg_threshold=cfg.bg_threshold, method=cfg.refine, texture_window=cfg.texture_window,
                stride=cfg.refine_stride, dilations=cfg.dilations, iterations=cfg.iterations,
                min_confidence=cfg.min_confidence,
            )
            refined = maps.refined.cpu()
            write_label_png(Path(out_dir) / f"{record.name}.png", refined.numpy())
            ignored += int((refined == 255).sum())
            total += refined.numel()
            if not record.has_masks:
                continue
            truth = torch.from_numpy(voc.read_class_map(record.name))
            raw = maps.raw.cpu()
            raw_confusion += confusion_matrix(raw, truth, num_labels)
            refined_confusion += confusion_matrix(refined, truth, num_labels)
            background_confusion += confusion_matrix(refined.masked_fill(refined == 255, 0), truth, num_labels)
            evaluated += 1
            if len(gallery) < cfg.gallery:
                gallery[record.name] = panels(
                    [image, cam_overlay(image, maps.cams, list(record.labels)),
                     colorize_labels(raw.numpy()), colorize_labels(refined.numpy()),
                     colorize_labels(truth.numpy())],
                    ["image", "CAM", "CAM threshold", "refined", "ground truth"],
                )
    seconds = time.perf_counter() - start
    with atomic_dir(args.gallery, replace=True) as gallery_dir:
        for name, picture in gallery.items():
            Image.fromarray(picture).save(Path(gallery_dir) / f"{name}.png")

    metrics = {"num_images": len(manifest.train), "num_evaluated": evaluated,
               "ignore_share": round(ignored / max(total, 1), 4)}
    if evaluated:
        iou = iou_per_class(refined_confusion)
        metrics.update(
            miou=round(_miou(refined_confusion), 2),
            miou_raw_cam=round(_miou(raw_confusion), 2),
            miou_ignore_as_background=round(_miou(background_confusion), 2),
            **{f"iou_{name}": round(100 * v, 2) for name, v in zip(("background", *manifest.class_names), iou.tolist())},
        )
    write_metrics(args.metrics, metrics)
    summary = f"mIoU {metrics.get('miou')} (raw CAM {metrics.get('miou_raw_cam')})"
    print(f"wsss: {len(manifest.train)} images in {seconds:.1f} s on {device}; {summary}, "
          f"ignore {100 * metrics['ignore_share']:.1f}% of pixels")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--model", default="data/models/pam.pt")
    parser.add_argument("--out", default="data/wsss")
    parser.add_argument("--metrics", default="metrics/wsss.json")
    parser.add_argument("--gallery", default="metrics/gallery/wsss")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
