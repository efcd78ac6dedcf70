"""DVC stage `train`: the BESTIE network with online self-refinement.

Runs as one process (`python stages/train.py`) or several
(`torchrun --nproc_per_node=N stages/train.py`: gloo on the CPU, nccl on CUDA).
Interrupted runs resume from the last state checkpoint under `--state-dir` when the
params, inputs and code are the same; the final model is written atomically at the end.
"""

import argparse
from pathlib import Path

from bestie.checkpoint import load_weights, save_checkpoint
from bestie.config import Params, to_dict
from bestie.data.instance_dataset import BestieTrainDataset, collate_samples
from bestie.data.manifest import load_manifest
from bestie.data.voc import VOCDataset
from bestie.distributed import init_distributed, shutdown_distributed
from bestie.engine import TrainState, train_bestie
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files
from bestie.io import write_tsv
from bestie.models import BestieNet
from bestie.runtime import seed_everything
from bestie.stage import run_stage

LOG_COLUMNS = ("step", "loss", "seg", "center", "offset", "lr", "refine_ms", "seconds")
# `train` params that do not change the trained weights: changing them still resumes.
NOT_IN_FINGERPRINT = ("resume", "workers", "log_every", "checkpoint_every")


def main(params: Params, args: argparse.Namespace) -> None:
    context = init_distributed(args.device)
    try:
        seed_everything(params.seed)
        manifest = load_manifest(Path(args.prepared) / "manifest.json")
        train = params.train
        voc = VOCDataset(params.data.root, params.data.train_split)
        dataset = BestieTrainDataset(
            voc, manifest.train, params.supervision, manifest.num_classes, args.wsss, args.pseudo_labels,
            crop_size=train.crop_size, scale_range=(train.scale_min, train.scale_max), sigma=train.sigma,
            dense_center_loss=train.dense_center_loss, min_size=params.pseudo_labels.min_size,
        )
        model = BestieNet(
            manifest.num_classes, train.backbone, train.pretrained,
            bn_momentum=train.bn_momentum, pretrained_key="train.pretrained",
        ).to(context.device)
        config = {**to_dict(train), "supervision": params.supervision, "seed": params.seed}

        fingerprint = run_fingerprint(
            {**config, "images": params.data.root, "pseudo_label_min_size": params.pseudo_labels.min_size},
            [Path(args.wsss), Path(args.pseudo_labels)], stage_code_files(Path(__file__)),
            ignore=NOT_IN_FINGERPRINT,
        )
        state_path, saved = find_run_state(
            args.state_dir, stage="train", kind="bestie", fingerprint=fingerprint, resume=train.resume,
            class_names=manifest.class_names, is_main=context.is_main,
        )
        state, history = TrainState(), []
        if saved is not None:
            load_weights(model, saved["model"], source=state_path)
            extra = saved["extra"]
            state = TrainState(extra["iteration"], extra["optimizer"], extra["scaler"])
            history = extra["history"]

        def save_state(network, new_state: TrainState) -> None:
            save_checkpoint(
                state_path, network.state_dict(), kind="bestie", config=config,
                class_names=manifest.class_names,
                extra={"iteration": new_state.iteration, "optimizer": new_state.optimizer,
                       "scaler": new_state.scaler, "history": history},
            )

        def log(step: int, scalars: dict) -> None:
            history.append({"step": step, **scalars})

        network = train_bestie(
            model, dataset, collate_samples, train, params.supervision, manifest.num_classes,
            context, seed=params.seed, state=state, save_state=save_state, log=log,
        )
        if context.is_main:
            save_checkpoint(
                args.out, network.state_dict(), kind="bestie", config=config,
                class_names=manifest.class_names,
            )
            write_tsv(args.log, LOG_COLUMNS, history)
            state_path.unlink(missing_ok=True)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--wsss", default="data/wsss")
    parser.add_argument("--pseudo-labels", default="data/pseudo_labels")
    parser.add_argument("--out", default="data/models/bestie.pt")
    parser.add_argument("--log", default="metrics/train/log.tsv")
    parser.add_argument("--state-dir", default="data/train_state",
                        help="resumable checkpoints (not a DVC output, so an interrupted run keeps them)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
