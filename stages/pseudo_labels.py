"""DVC stage `pseudo_labels`: semantic knowledge transfer, WSSS maps + points -> instance pseudo labels.

- cls: the peaks of the PAM classifier above `peaks.pseudo_thresh`; centers are centroids;
- point: the given points; centers are the points;
- full: the ground-truth instances (the upper bound).
"""

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bestie.coco import ground_truth_by_image
from bestie.config import Params
from bestie.data.manifest import ImageRecord, class_map_path, load_manifest, object_map_path
from bestie.data.png import read_label_png
from bestie.errors import BestieError
from bestie.io import atomic_dir, read_json, write_metrics
from bestie.metrics.instances import TransferTally
from bestie.peaks import read_peaks
from bestie.pseudo_labels import save_pseudo_labels
from bestie.stage import add_arguments, run_stage
from bestie.structures import PseudoLabel
from bestie.transfer import filter_points, instances_from_ground_truth, semantic_knowledge_transfer

NO_PEAKS = np.zeros((0, 4), dtype=np.float32)


def main(params: Params, args: argparse.Namespace) -> None:
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    train_gt = ground_truth_by_image(read_json(Path(args.prepared) / "train_gt.json"))
    peaks = read_peaks(args.peaks)
    options = params.pseudo_labels
    tally = TransferTally()

    def pseudo_label(record: ImageRecord) -> PseudoLabel:
        if params.supervision == "full":
            if not record.has_masks:
                raise BestieError(f"supervision full: training image {record.name} has no masks")
            return instances_from_ground_truth(
                read_label_png(object_map_path(args.prepared, "train", record.name)),
                read_label_png(class_map_path(args.prepared, "train", record.name)),
            )
        path = Path(args.wsss) / f"{record.name}.png"
        if not path.is_file():
            raise BestieError(f"{path}: WSSS map not found; re-run the wsss and wsss_network stages")
        table = peaks.get(record.name, NO_PEAKS)  # images without peaks are not in the table
        points, classes = filter_points(
            table[:, :2], table[:, 2].astype(int), table[:, 3], params.peaks.pseudo_thresh
        )
        return semantic_knowledge_transfer(
            read_label_png(path), points, classes, min_size=options.min_size,
            center="point" if params.supervision == "point" else "centroid",
            connectivity=options.connectivity,
        )

    def labelled() -> Iterator[tuple[str, PseudoLabel]]:
        """One image at a time: its pseudo label is scored, then written, then dropped."""
        for record in tqdm(manifest.train, desc="pseudo labels", disable=None):
            result = pseudo_label(record)
            tally.add(result, train_gt[record.image_id] if record.has_masks else None)
            yield record.name, result

    with atomic_dir(args.out, replace=True) as tmp:
        save_pseudo_labels(tmp, labelled())
    write_metrics(args.metrics, tally.metrics())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, prepared="data/prepared", wsss="data/wsss_network", peaks="data/peaks/peaks.tsv",
                  out="data/pseudo_labels", metrics="metrics/pseudo_labels.json")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
