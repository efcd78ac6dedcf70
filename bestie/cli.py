"""The ``bestie`` command: use a trained checkpoint on your own images.

    bestie predict IMAGE_OR_FOLDER... --checkpoint data/models/bestie.pt --out predictions/

Expected failures (a missing or corrupt checkpoint, a checkpoint of another model or class
set, an unreadable image) print one line ``error: ...`` and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from bestie import __version__
from bestie.coco import masks_to_results
from bestie.config import EvaluateParams
from bestie.errors import BestieError
from bestie.inference import load_bestie, predict_batch
from bestie.io import atomic_dir, write_json
from bestie.runtime import select_device
from bestie.visualize import overlay_instances

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (non-recursively) in named folders, sorted per folder."""
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BestieError(f"{item}: no images in this folder")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise BestieError(f"{item}: no such file or folder")
    return images


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BestieError(f"{path}: unreadable or truncated image ({err})") from None


def predict_images(
    inputs: list[str],
    checkpoint_path: str,
    out_dir: str,
    device: str = "auto",
    batch_size: int = 4,
    flip: bool = True,
    score_thresh: float = 0.0,
    classes_file: str | None = None,
) -> None:
    """A trained checkpoint on images and folders -> ``out_dir``: COCO results + overlays."""
    device = select_device(device)
    class_names = None
    if classes_file:
        class_names = [n.strip() for n in Path(classes_file).read_text().splitlines() if n.strip()]
    model, checkpoint = load_bestie(checkpoint_path, device, class_names=class_names)
    class_names = checkpoint["class_names"]
    options = replace(EvaluateParams(), flip=flip)
    paths = find_images(inputs)
    results, images_table = [], []
    with atomic_dir(out_dir) as out:
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        image_id = 0
        for chunk in tqdm(batches, desc="predict", unit="batch", disable=None):
            pixels = [read_rgb(p) for p in chunk]
            for path, image, instances in zip(chunk, pixels, predict_batch(model, pixels, device, options)):
                image_id += 1
                keep = instances.scores >= score_thresh
                masks, classes, scores = instances.masks[keep], instances.classes[keep], instances.scores[keep]
                images_table.append({"id": image_id, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
                results += masks_to_results(masks, classes, scores, image_id)
                overlay = overlay_instances(image, masks, classes, class_names, scores)
                Image.fromarray(overlay).save(out / f"{image_id:05d}_{path.stem}.png")
        write_json(out / "predictions.json", results, indent=None)
        write_json(out / "images.json", {"images": images_table, "categories": [
            {"id": i + 1, "name": name} for i, name in enumerate(class_names)]})
    print(f"{len(results)} instances in {len(paths)} images -> {out_dir}")


def predict_command(args: argparse.Namespace) -> None:
    predict_images(
        args.inputs, args.checkpoint, args.out, device=args.device, batch_size=args.batch_size,
        flip=args.flip, score_thresh=args.score_thresh, classes_file=args.classes,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bestie",
        description="Weakly-supervised instance segmentation (BESTIE). The training pipeline "
        "itself runs through DVC: `dvc repro`.",
    )
    parser.add_argument("--version", action="version", version=f"bestie {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict", help="instances in images: COCO result JSON + one overlay PNG per image",
        description="Predict instances with a trained BESTIE checkpoint. Writes OUT/predictions.json "
        "(COCO results; image ids as in OUT/images.json) and OUT/<id>_<name>.png overlays.",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--checkpoint", required=True, help="a bestie.pt written by the train stage")
    predict.add_argument("--out", required=True, help="output folder (replaced atomically)")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--no-flip", dest="flip", action="store_false", help="skip flip averaging")
    predict.add_argument("--score-thresh", type=float, default=0.0, help="drop instances scoring below")
    predict.add_argument("--classes", help="classes.txt the checkpoint must have been trained on")
    predict.set_defaults(run=predict_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        sys.exit(2)
    try:
        args.run(args)
    except BestieError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
