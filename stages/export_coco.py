"""DVC stage `export_coco`: the trained BESTIE network's instances on every training image, as a
COCO instances file of pseudo labels for Mask R-CNN (docs/method.md §8).

Inference follows the `inference` params, as the `evaluate` stage's does; instances scoring
below the threshold (`export_coco.threshold`: `score_thresh`, or calibrated on the image-level
labels) are dropped, and with `export_coco.label_filter` those of classes the image is not
labelled with (bestie.pseudo_export). With point supervision and `export_coco.point_guided`,
the training points guide the grouping (one instance a point).
The pseudo labels' quality against the training masks (where the dataset has them) goes to
the metrics file, as a diagnostic only: nothing downstream trains on those masks.
Runs as one process or several (`torchrun --nproc_per_node=N stages/export_coco.py`): each
predicts its part of the images, the main process merges them and writes every output.
"""

import argparse
from pathlib import Path

from bestie.config import Params
from bestie.data.manifest import load_manifest
from bestie.distributed import distributed
from bestie.evaluate_split import predict_coco
from bestie.inference import load_bestie, record_predictor, settings_from_params
from bestie.io import read_json, write_json, write_metrics
from bestie.metrics.instances import exported_label_metrics
from bestie.pseudo_export import select_pseudo_labels
from bestie.stage import add_arguments, run_stage


def main(params: Params, args: argparse.Namespace) -> None:
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    with distributed(args.device) as context:
        model, _ = load_bestie(args.model, context.device, class_names=manifest.class_names)
        options = params.export_coco
        predict = record_predictor(
            model, context.device, settings_from_params(params.inference),
            point_guided=params.supervision == "point" and options.point_guided,
        )

        score_thresh = options.score_thresh if options.threshold == "fixed" else None  # None: from the labels
        predicted = predict_coco(  # a fixed threshold drops instances as they come: less to hold
            predict, manifest.train, manifest.class_names, manifest.category_ids, min_score=score_thresh or 0.0,
            context=context,
        )
        if context.is_main:
            labels = {r.image_id: [manifest.category_ids[c] for c in r.labels] for r in manifest.train}
            coco, selection = select_pseudo_labels(predicted, labels, score_thresh, options.label_filter)
            coco["info"] = {"description": f"bestie pseudo labels ({params.supervision} supervision)"}
            write_json(args.out, coco, indent=None)
            stats = selection | exported_label_metrics(coco, read_json(args.train_gt))
            write_metrics(args.metrics, stats)
            print(f"export_coco: {stats['instances']} instances on {stats['images_with_instances']} of "
                  f"{stats['images']} training images, score threshold {selection['score_thresh']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, prepared="data/prepared", model="data/models/bestie.pt",
                  train_gt="data/prepared/train_gt.json", out="data/coco/train_pseudo.json",
                  metrics="metrics/export_coco.json", device="auto")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
