"""What the affinity walk (``wsss_network.method: affinity``, docs/method.md §2) does to the WSSS
maps, step by step. Run from a project folder whose ``wsss`` stage has run (``dvc repro wsss``)::

    python benchmarks/affinity_walk.py --model affinity.pt   # trains it first if the file is absent

Trains the embedding network as the ``wsss_network`` stage does (its params, ``method: affinity``;
minutes on a CPU) and saves it to ``--model``, or loads it from there, then prints the maps'
mIoU on the training split (the ``wsss`` stage's metric): the ``wsss`` maps as given (unsure
pixels not scored, and scored as background), and walked for ``--steps`` steps, each both as the
stage writes it (every pixel walked) and with only the unsure pixels taking the walked labels.
Zero steps is the maps pooled to the embedding's grid and resized back: the grid's own cost.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
from wsss_network import train_network  # noqa: E402

from bestie.affinity import propagate_labels  # noqa: E402
from bestie.config import load_params  # noqa: E402
from bestie.data.manifest import class_map_path, load_manifest  # noqa: E402
from bestie.data.png import read_label_png  # noqa: E402
from bestie.data.transforms import normalize  # noqa: E402
from bestie.io import read_image  # noqa: E402
from bestie.metrics.segmentation import SemanticMapTally  # noqa: E402
from bestie.models import EmbeddingNet  # noqa: E402
from bestie.runtime import seed_everything, select_device  # noqa: E402
from bestie.structures import IGNORE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the trained embedding network (made if absent)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 16, 64, 256])
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--wsss", default="data/wsss")
    args = parser.parse_args()

    params = load_params("params.yaml")
    options = dataclasses.replace(params.wsss_network, method="affinity")
    params = dataclasses.replace(params, wsss=dataclasses.replace(params.wsss, network=True), wsss_network=options)
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    device = select_device("auto")
    if args.model.is_file():
        model = EmbeddingNet(options.embedding_dim, options.backbone).to(device).eval()
        model.load_state_dict(torch.load(args.model, map_location=device))
    else:
        seed_everything(params.seed)  # as the stage does: the network it would train
        model, history = train_network(params, argparse.Namespace(wsss=args.wsss, state_dir="data/train_state"),
                                       manifest, device)
        print(f"trained: {history[-1]}")
        torch.save(model.state_dict(), args.model)

    rows = ["given (unsure not scored)", "given (unsure as background)"]
    rows += [f"walked {steps} steps{kind}" for steps in args.steps for kind in ("", ", unsure pixels only")]
    tallies = {row: SemanticMapTally(manifest.num_classes + 1) for row in rows}
    for record in manifest.train:
        given = torch.from_numpy(read_label_png(Path(args.wsss) / f"{record.name}.png"))
        truth = torch.from_numpy(read_label_png(class_map_path(args.prepared, "train", record.name)))
        image = normalize(read_image(record.path)).to(device)
        tallies[rows[0]].add(given, truth)
        tallies[rows[1]].add(given.masked_fill(given == IGNORE, 0), truth)
        for steps in args.steps:
            walked = propagate_labels(model, image, given.to(device), manifest.num_classes + 1,
                                      radius=options.affinity_radius, beta=options.walk_beta, steps=steps,
                                      min_confidence=options.min_confidence).cpu()
            tallies[f"walked {steps} steps"].add(walked, truth)
            tallies[f"walked {steps} steps, unsure pixels only"].add(torch.where(given == IGNORE, walked, given), truth)

    print("| maps | mIoU | background IoU | unsure share |\n|---|---|---|---|")
    for row, tally in tallies.items():
        metrics = tally.metrics(manifest.class_names, raw_cam=False)
        print(f"| {row} | {metrics['miou']:.1f} | {metrics['iou_background']:.1f} | {metrics['ignore_share']:.3f} |")


if __name__ == "__main__":
    main()
