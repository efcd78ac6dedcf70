"""DVC stage `evaluate`: the trained BESTIE network on val: COCO predictions, metrics, gallery."""

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from bestie.coco import masks_to_results
from bestie.config import Params
from bestie.data.manifest import load_manifest
from bestie.data.voc import VOCDataset
from bestie.evaluation import evaluate_instances
from bestie.inference import load_bestie, predict_instances
from bestie.io import atomic_dir, write_json
from bestie.runtime import select_device
from bestie.stage import run_stage
from bestie.visualize import overlay_instances, panels


def main(params: Params, args: argparse.Namespace) -> None:
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    device = select_device(args.device)
    model, _ = load_bestie(args.model, device, class_names=manifest.class_names)
    voc = VOCDataset(params.data.root, params.data.val_split)
    options = params.evaluate
    point_guided = params.supervision == "point" and options.point_guided
    results, gallery = [], {}
    for record in tqdm(manifest.val, desc="evaluate", disable=None):
        image = voc.read_image(record.name)
        instances = predict_instances(
            model, image, device, options, points=record.points if point_guided else None
        )
        results += masks_to_results(instances.masks, instances.classes, instances.scores, record.image_id)
        if len(gallery) < options.gallery:
            gt = voc.ground_truth(record.name)
            gallery[record.name] = panels(
                [image,
                 overlay_instances(image, instances.masks, instances.classes, manifest.class_names, instances.scores),
                 overlay_instances(image, gt.masks, gt.classes, manifest.class_names)],
                ["image", "prediction", "ground truth"],
            )
    with atomic_dir(args.out) as tmp:
        write_json(Path(tmp) / "predictions.json", results, indent=None)
    with atomic_dir(args.gallery) as tmp:
        for name, picture in gallery.items():
            Image.fromarray(picture).save(Path(tmp) / f"{name}.png")
    write_json(args.metrics, evaluate_instances(args.val_gt, results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--val-gt", default="data/eval/val_gt.json")
    parser.add_argument("--model", default="data/models/bestie.pt")
    parser.add_argument("--out", default="data/eval/bestie")
    parser.add_argument("--metrics", default="metrics/bestie.json")
    parser.add_argument("--gallery", default="metrics/gallery/bestie")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
