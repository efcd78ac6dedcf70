"""The ``bestie`` command: use a trained checkpoint on your own images; run a preset.

    bestie predict IMAGE_OR_FOLDER... --checkpoint data/models/bestie.pt --out predictions/
    bestie preset voc_paper [DVC_EXP_RUN_ARGS...]    # dvc exp run -S ... from presets/voc_paper.yaml

Expected failures (a missing or corrupt checkpoint, a checkpoint of another model or class
set, an unreadable image, an ``--out`` that holds anything but an earlier result) print one
line ``error: ...`` and exit with status 1. Every input is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from bestie import __version__
from bestie.coco import coco_categories, masks_to_results
from bestie.config import InferenceParams, parse_section, to_dict
from bestie.data.sources.voc import read_class_names
from bestie.errors import BestieError
from bestie.inference import (
    SETTINGS_FILE, RecordedInference, load_bestie, predict_instances, recorded_inference, settings_from_params,
)
from bestie.io import atomic_dir, read_image, write_json
from bestie.presets import exp_run_command, load_preset, preset_path
from bestie.runtime import select_device
from bestie.visualize import overlay_instances

DEFAULT_SETTINGS = f"data/eval/bestie/{SETTINGS_FILE}"  # the evaluate stage's record
# Written into every result folder: only a folder holding it (and nothing added since) is
# replaced by the next `bestie predict --out` there; any other non-empty path is refused.
RESULT_MARKER = ".bestie-predict"
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


def inference_settings(
    record_path: str | None, checkpoint_path: str, overrides: dict[str, Any]
) -> tuple[RecordedInference, str]:
    """The settings to predict with and the dataset's category ids, and a line saying where
    they came from.

    By default the ``evaluate`` stage's record for this checkpoint
    (``data/eval/bestie/inference.json``), so ``bestie predict`` predicts exactly as the
    evaluation did and labels instances with the dataset's own category ids; without such a
    record, the built-in defaults (those of ``params.yaml`` as shipped) and category ids
    class + 1. An explicitly given ``record_path`` must exist and match the checkpoint.
    ``overrides`` (flag values, None = not given) replace single settings.
    """
    if not Path(checkpoint_path).is_file():  # before any record is compared with it
        raise BestieError(f"{checkpoint_path}: checkpoint not found")
    path = Path(record_path or DEFAULT_SETTINGS)
    defaults = RecordedInference(InferenceParams(), None)
    if record_path or path.is_file():
        try:
            recorded, source = recorded_inference(path, checkpoint_path), f"{path} (the evaluate stage's)"
        except BestieError:
            if record_path:
                raise
            recorded, source = defaults, f"built-in defaults ({path} records another checkpoint)"
    else:
        recorded, source = defaults, f"built-in defaults (no {path})"
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        merged = to_dict(recorded.settings)
        for key, value in given.items():
            section, _, name = key.rpartition(".")
            (merged[section] if section else merged)[name] = value
        recorded = recorded._replace(settings=parse_section("inference", merged))
        source += ", overridden: " + ", ".join(f"{k}={v}" for k, v in given.items())
    return recorded, source


def predict_images(
    inputs: list[str],
    checkpoint_path: str,
    out_dir: str,
    settings: InferenceParams,
    device: str = "auto",
    score_thresh: float = 0.0,
    classes_file: str | None = None,
    category_ids: Sequence[int] | None = None,
) -> None:
    """A trained checkpoint on images and folders -> ``out_dir``: COCO results + overlays.

    Results carry ``category_ids[class]`` (None: class + 1), as ``images.json``'s categories.

    ``out_dir`` must be new, empty or an earlier result (:data:`RESULT_MARKER`); it is
    checked with the other inputs, before the model is loaded. Each image is predicted on
    its own (:func:`bestie.inference.predict_instances`), so its instances do not depend on
    the other inputs.
    """
    device = select_device(device)
    paths = find_images(inputs)
    class_names = read_class_names(classes_file) if classes_file else None
    with atomic_dir(out_dir, marker=RESULT_MARKER) as out:
        model, checkpoint = load_bestie(checkpoint_path, device, class_names=class_names)
        class_names = checkpoint["class_names"]
        if category_ids is not None and len(category_ids) != len(class_names):
            raise BestieError(f"{len(category_ids)} category ids recorded for a checkpoint of {len(class_names)} classes")
        results, images_table = [], []
        for image_id, path in enumerate(tqdm(paths, desc="predict", unit="image", disable=None), start=1):
            image = read_image(path)
            instances = predict_instances(model, image, device, settings_from_params(settings))
            keep = instances.scores >= score_thresh
            masks, classes, scores = instances.masks[keep], instances.classes[keep], instances.scores[keep]
            images_table.append({"id": image_id, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
            results += masks_to_results(masks, classes, scores, image_id, category_ids)
            overlay = overlay_instances(image, masks, classes, class_names, scores)
            Image.fromarray(overlay).save(out / f"{image_id:05d}_{path.stem}.png")
        write_json(out / "predictions.json", results, indent=None)
        write_json(out / "images.json", {"images": images_table, "categories": coco_categories(class_names, category_ids)})
    print(f"{len(results)} instances in {len(paths)} images -> {out_dir}")


def predict_command(args: argparse.Namespace) -> None:
    recorded, source = inference_settings(args.settings, args.checkpoint, {
        "flip": args.flip, "seg_refine.iterations": args.seg_refine_iterations,
        "center_thresh": args.center_thresh, "nms_kernel": args.nms_kernel, "min_size": args.min_size,
    })
    print(f"inference settings: {source}")
    predict_images(
        args.inputs, args.checkpoint, args.out, recorded.settings, device=args.device,
        score_thresh=args.score_thresh, classes_file=args.classes, category_ids=recorded.category_ids,
    )


def preset_command(args: argparse.Namespace) -> None:
    overlay, _ = load_preset(preset_path(args.name))  # checked before DVC starts
    command = exp_run_command(overlay, args.dvc_args)
    print(shlex.join(command), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(command).returncode)


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
    predict.add_argument("--out", required=True, help="output folder: new, empty or an earlier result of "
                         "bestie predict, which is replaced atomically; anything else is refused")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    predict.add_argument("--score-thresh", type=float, default=0.0, help="drop instances scoring below")
    settings = predict.add_argument_group(
        "inference settings", f"By default those the evaluate stage recorded for this checkpoint "
        f"({DEFAULT_SETTINGS}), else the built-in defaults; each flag overrides one.")
    settings.add_argument("--settings", metavar="JSON", help=f"a settings record (default {DEFAULT_SETTINGS})")
    settings.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                          help="average with the mirror image's outputs")
    settings.add_argument("--seg-refine-iterations", type=int, metavar="N", help="segmentation refinement; 0: off")
    settings.add_argument("--center-thresh", type=float, metavar="T")
    settings.add_argument("--nms-kernel", type=int, metavar="K", help="odd width of the center peak window")
    settings.add_argument("--min-size", type=int, metavar="PX", help="smallest segmentation component kept")
    predict.add_argument("--classes", help="classes.txt the checkpoint must have been trained on")
    predict.set_defaults(run=predict_command)
    preset = commands.add_parser(
        "preset", help="run a published configuration as a DVC experiment",
        description="Check presets/NAME.yaml (or a preset file) on top of params.yaml, then run "
        "`dvc exp run -S key=value ...` with its values, followed by any further dvc exp run "
        "arguments (--temp, -n NAME, more -S, which win over the preset's).",
    )
    preset.add_argument("--dry-run", action="store_true", help="print the dvc command, do not run it")
    preset.add_argument("name", metavar="NAME", help="voc_paper, coco_paper, ... or a path to a preset file")
    preset.add_argument("dvc_args", nargs=argparse.REMAINDER, metavar="DVC_EXP_RUN_ARGS")
    preset.set_defaults(run=preset_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BestieError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
