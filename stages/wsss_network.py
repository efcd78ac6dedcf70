"""DVC stage `wsss_network`: the seed's second WSSS step (docs/method.md §2), optional.

With `wsss.network` true, a network with a project backbone and BESTIE's semantic decoder is
trained on the `wsss` maps (255 = unsure, ignored) through the one training loop, and gives the
maps written to `--out` for the training split, by `wsss_network.method`:
- `segmentation` (DeepLab-style, the seed's): its predictions, restricted to each image's classes;
- `affinity` (AffinityNet-style, `bestie.affinity`): it learns which pixels belong together, and
  each `wsss` map is walked over those affinities.
With it false the `wsss` maps are copied to `--out` unchanged.
`pseudo_labels` and `train` read `--out`, so the stage is always in the DAG and the switch is a
param. Either way the maps written are scored like the `wsss` stage's maps (`miou` ...), and
`miou_wsss_input` scores the maps it was given.

Interrupted trainings resume from the last state checkpoint under `--state-dir` when the params,
the `wsss` maps and the code are the same.
"""

import argparse
import shutil
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import default_collate
from tqdm import tqdm

from bestie.affinity import AffinityTraining, propagate_labels
from bestie.config import Params, to_dict
from bestie.data.datasets import SegmentationDataset
from bestie.data.manifest import Manifest, class_map_path, load_manifest
from bestie.data.png import read_label_png, write_label_png
from bestie.data.transforms import normalize
from bestie.distributed import DistContext
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files
from bestie.io import atomic_dir, read_image, write_metrics, write_tsv
from bestie.metrics.segmentation import SemanticMapTally
from bestie.models import EmbeddingNet, SegmentationNet
from bestie.runtime import seed_everything, select_device
from bestie.stage import add_arguments, run_stage
from bestie.training import (
    LoopSettings, build_optimizer, iteration_batches, load_train_state, poly_lr, state_saver, train,
)
from bestie.wsss_network import SegmentationTraining, predict_semantic_map

LOG_COLUMNS = ("step", "loss", "lr", "seconds")
# `wsss_network` params that do not change the trained weights (the others act at prediction only).
NOT_IN_FINGERPRINT = ("resume", "workers", "log_every", "checkpoint_every", "flip", "min_confidence",
                      "walk_beta", "walk_steps")


def train_network(
    params: Params, args: argparse.Namespace, manifest: Manifest, device: torch.device
) -> tuple[SegmentationNet | EmbeddingNet, list[dict]]:
    """The network trained on the `wsss` maps of the training split, in eval mode, and its log."""
    options = params.wsss_network
    dataset = SegmentationDataset(manifest.train, args.wsss, crop_size=options.crop_size,
                                  scale_range=(options.scale_min, options.scale_max))
    if options.method == "affinity":
        model = EmbeddingNet(options.embedding_dim, options.backbone, options.pretrained,
                             bn_momentum=options.bn_momentum).to(device)
        objective = AffinityTraining(model, options.affinity_radius)
    else:
        model = SegmentationNet(manifest.num_classes, options.backbone, options.pretrained,
                                bn_momentum=options.bn_momentum).to(device)
        objective = SegmentationTraining(model, options.hard_pixel_ratio)
    config = {**to_dict(options), "seed": params.seed}
    fingerprint = run_fingerprint(
        {**config, "images": params.data.root}, [Path(args.wsss)], stage_code_files(Path(__file__)),
        ignore=NOT_IN_FINGERPRINT,
    )
    run = find_run_state(
        args.state_dir, stage="wsss_network", kind="wsss_network", fingerprint=fingerprint,
        resume=options.resume, class_names=manifest.class_names,
    )
    state = load_train_state(run, model)
    context = DistContext(0, 1, device)
    history = train(
        objective,
        iteration_batches(dataset, default_collate, options.batch_size, state.iteration, options.iterations,
                          params.seed, context, options.workers),
        build_optimizer(options.optimizer, model.parameters(), options.lr, options.weight_decay),
        partial(poly_lr, total=options.iterations, warmup=options.warmup_iters, power=options.poly_power),
        LoopSettings(options.iterations, options.log_every, options.checkpoint_every, seed=params.seed,
                     amp=options.amp, lr_key="wsss_network.lr", name="wsss_network"),
        context, state=state,
        save_state=state_saver(run.path, model, kind="wsss_network", config=config,
                               class_names=manifest.class_names),
    )
    run.path.unlink(missing_ok=True)
    return model.eval(), history


def main(params: Params, args: argparse.Namespace) -> None:
    seed_everything(params.seed)
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    device = select_device(args.device)
    model, history = train_network(params, args, manifest, device) if params.wsss.network else (None, [])
    options = params.wsss_network

    tally = SemanticMapTally(manifest.num_classes + 1)
    with atomic_dir(args.out, replace=True) as out_dir:
        for record in tqdm(manifest.train, desc="wsss_network", unit="image", disable=None):
            source, target = Path(args.wsss) / f"{record.name}.png", Path(out_dir) / f"{record.name}.png"
            given = torch.from_numpy(read_label_png(source))
            if model is None:
                shutil.copyfile(source, target)
                labels = given
            else:
                image = normalize(read_image(record.path)).to(device)
                if options.method == "affinity":
                    labels = propagate_labels(
                        model, image, given.to(device), manifest.num_classes + 1, radius=options.affinity_radius,
                        beta=options.walk_beta, steps=options.walk_steps, min_confidence=options.min_confidence,
                    ).cpu()
                else:
                    classes = torch.tensor(record.labels, dtype=torch.int64, device=device)
                    labels = predict_semantic_map(model, image, classes, flip=options.flip,
                                                  min_confidence=options.min_confidence).cpu()
                write_label_png(target, labels.numpy())
            truth = (torch.from_numpy(read_label_png(class_map_path(args.prepared, "train", record.name)))
                     if record.has_masks else None)
            tally.add(labels, truth, raw=given)  # the first confusion scores the maps given
    write_tsv(args.log, LOG_COLUMNS, history)

    metrics = tally.metrics(manifest.class_names)
    if "miou_raw_cam" in metrics:  # the first confusion scored the maps given, not raw CAMs
        metrics["miou_wsss_input"] = metrics.pop("miou_raw_cam")
    write_metrics(args.metrics, {"network": int(params.wsss.network), **metrics})
    print(f"wsss_network ({options.method + ' network trained' if model is not None else 'off: maps passed through'}): "
          f"mIoU {metrics.get('miou')} (wsss input {metrics.get('miou_wsss_input')})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(
        parser,
        prepared="data/prepared",
        wsss="data/wsss",
        out="data/wsss_network",
        log="metrics/wsss_network/log.tsv",
        metrics="metrics/wsss_network.json",
        state_dir="data/train_state",
        device="auto",
    )
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
