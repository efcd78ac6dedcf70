"""DVC stage `evaluate`: the trained BESTIE network on val: COCO predictions, metrics, gallery.

The predictions follow the `inference` params; the settings are recorded beside them
(`inference.json`, with the checkpoint's digest), where `bestie predict` finds them.
Runs as one process or several (`torchrun --nproc_per_node=N stages/evaluate.py`): each
predicts its part of the images, the main process merges them and writes every output.
"""

import argparse
from pathlib import Path

from bestie.coco import ground_truth_by_image
from bestie.config import Params
from bestie.data.manifest import load_manifest
from bestie.distributed import distributed
from bestie.evaluate_split import predict_split, write_evaluation
from bestie.inference import SETTINGS_FILE, load_bestie, record_predictor, settings_from_params, settings_record
from bestie.io import read_json
from bestie.stage import add_arguments, run_stage


def main(params: Params, args: argparse.Namespace) -> None:
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    with distributed(args.device) as context:
        model, _ = load_bestie(args.model, context.device, class_names=manifest.class_names)
        options = params.inference
        predict = record_predictor(
            model, context.device, settings_from_params(options),
            point_guided=params.supervision == "point" and params.evaluate.point_guided,
        )

        predictions = predict_split(
            predict, manifest.val, manifest.class_names, manifest.category_ids,
            ground_truth_by_image(read_json(args.val_gt)), gallery_size=params.evaluate.gallery, context=context,
        )
        if context.is_main:
            write_evaluation(
                predictions, args.val_gt, out_dir=args.out, metrics_path=args.metrics, gallery_dir=args.gallery,
                records={SETTINGS_FILE: settings_record(options, args.model, manifest.category_ids)},
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, prepared="data/prepared", val_gt="data/eval/val_gt.json", model="data/models/bestie.pt",
                  out="data/eval/bestie", metrics="metrics/bestie.json", gallery="metrics/gallery/bestie",
                  device="auto")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
