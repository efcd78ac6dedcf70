"""One offline self-training round: does BESTIE improve when it learns again from its own
segmentation of the training split? (issue 20's lever "more self-refinement rounds")

    python benchmarks/self_training_round.py   # in a workspace where `dvc repro evaluate` has run

Round 2 starts from the trained model of the workspace (``data/models/bestie.pt``):

1. relabel: its segmentation of each training image (``inference.flip``, ``inference.seg_refine``),
   restricted to the image's classes, pixels below ``wsss.min_confidence`` unsure (255);
2. ``stages/pseudo_labels.py`` on those maps (the same peaks, or the given points);
3. ``stages/train.py`` and ``stages/evaluate.py`` with the workspace's params, for each of
   ``--variants``: ``round2`` learns the new maps and their pseudo instances; ``round2_instances``
   learns the new pseudo instances and keeps the WSSS maps as its segmentation target.

Everything is written under ``--work`` (default ``data/self_training``), none of it into the DVC
outputs. Prints a Markdown table (round 1 is the workspace's own metrics): the maps' mIoU on the
training split (the ``wsss`` stage's metric), the pseudo instances' precision50 / recall50, and
BESTIE's voc_map. Takes a BESTIE training a variant; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from bestie.config import SegRefineParams, load_params
from bestie.data.manifest import class_map_path, load_manifest
from bestie.data.png import read_label_png, write_label_png
from bestie.inference import load_bestie, network_outputs, refine_segmentation
from bestie.io import atomic_dir, read_image, read_json, write_metrics
from bestie.metrics.segmentation import SemanticMapTally
from bestie.runtime import select_device
from bestie.wsss_network import confident_labels, restrict_to_classes

THRESHOLDS = (25, 50, 70, 75)
VARIANTS = {"round2": "round 2", "round2_instances": "round 2, instances only"}  # folder: table name


def relabel(model_path: Path, prepared: Path, out: Path, metrics_path: Path, *, flip: bool,
            refine: SegRefineParams, min_confidence: float, device: torch.device) -> None:
    """Step 1: the model's refined, class-restricted segmentation of every training image as a WSSS map."""
    manifest = load_manifest(prepared / "manifest.json")
    model, _ = load_bestie(model_path, device, class_names=manifest.class_names)
    tally = SemanticMapTally(manifest.num_classes + 1)
    with atomic_dir(out, replace=True) as out_dir:
        for record in tqdm(manifest.train, desc="relabel", unit="image", disable=None):
            normalized, seg, _, _ = network_outputs(model, read_image(record.path), device, flip)
            seg = restrict_to_classes(seg, torch.tensor(record.labels, dtype=torch.int64, device=device))
            log_probs = refine_segmentation(normalized, seg, iterations=refine.iterations,
                                            texture_window=refine.texture_window, stride=refine.stride,
                                            dilations=refine.dilations)
            labels = confident_labels(log_probs.softmax(dim=0), min_confidence).cpu()
            write_label_png(Path(out_dir) / f"{record.name}.png", labels.numpy())
            truth = (torch.from_numpy(read_label_png(class_map_path(prepared, "train", record.name)))
                     if record.has_masks else None)
            tally.add(labels, truth)
    write_metrics(metrics_path, tally.metrics(manifest.class_names, raw_cam=False))


def stage(script: str, *args: str) -> None:
    subprocess.run([sys.executable, f"stages/{script}.py", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="data/self_training", help="where round 2 writes everything")
    parser.add_argument("--min-confidence", type=float,
                        help="relabelled pixels less sure than this are unsure (default: wsss.min_confidence)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="the trainings to run")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    work, prepared = Path(args.work), Path("data/prepared")
    params = load_params("params.yaml")
    min_confidence = params.wsss.min_confidence if args.min_confidence is None else args.min_confidence

    relabel(Path("data/models/bestie.pt"), prepared, work / "maps", work / "maps.json", flip=params.inference.flip,
            refine=params.inference.seg_refine, min_confidence=min_confidence, device=select_device(args.device))
    stage("pseudo_labels", "--wsss", str(work / "maps"), "--out", str(work / "pseudo_labels"),
          "--metrics", str(work / "pseudo_labels.json"))
    wsss_maps, wsss_metrics_file = Path("data/wsss_network"), Path("metrics/wsss_network.json")
    # name: (its folder, its segmentation target and that target's metrics)
    variants = {VARIANTS[name]: (work / name, *targets) for name, targets in (
        ("round2", (work / "maps", work / "maps.json")),
        ("round2_instances", (wsss_maps, wsss_metrics_file)),
    ) if name in args.variants}
    for run, maps, _ in variants.values():
        stage("train", "--wsss", str(maps), "--pseudo-labels", str(work / "pseudo_labels"),
              "--out", str(run / "bestie.pt"), "--log", str(run / "log.tsv"), "--state-dir", str(run / "state"))
        stage("evaluate", "--model", str(run / "bestie.pt"), "--out", str(run / "eval"),
              "--metrics", str(run / "bestie.json"), "--gallery", str(run / "gallery"))

    rows = [("round 1 (the workspace)", wsss_metrics_file, Path("metrics/pseudo_labels.json"),
             Path("metrics/bestie.json"))]
    rows += [(name, maps_metrics, work / "pseudo_labels.json", run / "bestie.json")
             for name, (run, _, maps_metrics) in variants.items()]
    print(f"| model | segmentation target: mIoU (train) | pseudo instances: precision50 / recall50 | "
          f"{' | '.join(f'voc_map{t}' for t in THRESHOLDS)} |")
    print("|---|---|---|" + "---|" * len(THRESHOLDS))
    for name, *files in rows:
        maps, pseudo, bestie = (read_json(f) for f in files)
        print(f"| {name} | {maps['miou']:.1f} | {pseudo['precision50']:.1f} / {pseudo['recall50']:.1f} | "
              + " | ".join(f"{bestie[f'voc_map{t}']:.1f}" for t in THRESHOLDS) + " |")


if __name__ == "__main__":
    main()
