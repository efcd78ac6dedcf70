"""DVC stage `train`: the BESTIE network with online self-refinement.

Runs as one process (`python stages/train.py`) or several
(`torchrun --nproc_per_node=N stages/train.py`: gloo on the CPU, nccl on CUDA).
Interrupted runs resume from the last state checkpoint under `--state-dir` when the
params, inputs and code are the same; the final model is written atomically at the end.
"""

import argparse
from functools import partial
from pathlib import Path

from bestie.checkpoint import save_checkpoint
from bestie.config import Params, to_dict
from bestie.data.instance_dataset import BestieTrainDataset, collate_samples
from bestie.data.manifest import load_manifest
from bestie.distributed import distributed
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files
from bestie.io import write_tsv
from bestie.losses import BestieCriterion, BestieTraining
from bestie.models import BestieNet
from bestie.runtime import seed_everything
from bestie.stage import add_arguments, run_stage
from bestie.training import (
    LoopSettings, build_optimizer, iteration_batches, load_train_state, poly_lr, state_saver, train as train_loop,
)

LOG_COLUMNS = ("step", "loss", "seg", "center", "offset", "lr", "refine_ms", "seconds")
# `train` params that do not change the trained weights: changing them still resumes.
NOT_IN_FINGERPRINT = ("resume", "workers", "log_every", "checkpoint_every")


def main(params: Params, args: argparse.Namespace) -> None:
    with distributed(args.device) as context:
        seed_everything(params.seed)
        manifest = load_manifest(Path(args.prepared) / "manifest.json")
        train = params.train
        dataset = BestieTrainDataset(
            manifest.train, params.supervision, manifest.num_classes, args.wsss, args.pseudo_labels, args.prepared,
            crop_size=train.crop_size, scale_range=(train.scale_min, train.scale_max), sigma=train.sigma,
            dense_center_loss=train.dense_center_loss, min_size=params.pseudo_labels.min_size,
        )
        model = BestieNet(
            manifest.num_classes, train.backbone, train.pretrained,
            bn_momentum=train.bn_momentum,
        ).to(context.device)
        config = {**to_dict(train), "supervision": params.supervision, "seed": params.seed}

        fingerprint = run_fingerprint(
            {**config, "pseudo_label_min_size": params.pseudo_labels.min_size},
            [Path(args.wsss), Path(args.pseudo_labels), Path(args.prepared) / "manifest.json"],
            stage_code_files(Path(__file__)),
            ignore=NOT_IN_FINGERPRINT,
        )
        run = find_run_state(
            args.state_dir, stage="train", kind="bestie", fingerprint=fingerprint, resume=train.resume,
            class_names=manifest.class_names, is_main=context.is_main,
        )
        state = load_train_state(run, model)

        if train.batch_size % context.world_size:
            raise ValueError(f"train.batch_size {train.batch_size} must divide by {context.world_size} processes")
        criterion = BestieCriterion(
            params.supervision, manifest.num_classes, seg_weight=train.seg_weight,
            center_weight=train.center_weight, offset_weight=train.offset_weight,
            hard_pixel_ratio=train.hard_pixel_ratio, refine_from=train.refine_iter if train.refine else None,
            refine_thresh=train.refine_thresh, refine_nms_kernel=train.refine_nms_kernel,
            refine_max_instances=train.refine_max_instances, sigma=train.sigma,
            seg_refine=to_dict(train.seg_self_refine) if train.seg_self_refine.iterations else None,
            seg_refine_from=train.seg_self_refine_iter,
            pairwise=to_dict(train.pairwise) if train.pairwise.weight else None,
            late_hard_pixel_ratio=train.late_hard_pixel_ratio, late_hard_pixel_iter=train.late_hard_pixel_iter,
        )
        history = train_loop(
            BestieTraining(model, criterion),
            iteration_batches(dataset, collate_samples, train.batch_size // context.world_size, state.iteration,
                              train.iterations, params.seed, context, train.workers),
            build_optimizer("adam", model.parameters(), train.lr, train.weight_decay),
            partial(poly_lr, total=train.iterations, warmup=train.warmup_iters, power=train.poly_power),
            LoopSettings(train.iterations, train.log_every, train.checkpoint_every, seed=params.seed, amp=train.amp,
                         channels_last=train.channels_last),
            context, state=state,
            save_state=state_saver(run.path, model, kind="bestie", config=config, class_names=manifest.class_names),
        )
        if context.is_main:
            save_checkpoint(
                args.out, model.state_dict(), kind="bestie", config=config, class_names=manifest.class_names,
            )
            pairwise_column = ("pairwise",) if train.pairwise.weight > 0 else ()
            write_tsv(args.log, LOG_COLUMNS + pairwise_column, history)
            run.path.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(
        parser,
        prepared="data/prepared",
        wsss="data/wsss_network",
        pseudo_labels="data/pseudo_labels",
        out="data/models/bestie.pt",
        log="metrics/train/log.tsv",
        state_dir="data/train_state",
        device="auto",
    )
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
