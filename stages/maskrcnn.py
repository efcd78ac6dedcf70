"""DVC stage `maskrcnn`: Mask R-CNN trained on the exported pseudo labels, then evaluated on val.

Interrupted runs resume from the last state checkpoint under `--state-dir` when the params,
the pseudo labels and the code are the same; the final model is written atomically at the end.
"""

import argparse
from functools import partial
from pathlib import Path

from bestie.checkpoint import save_checkpoint
from bestie.config import Params, to_dict
from bestie.coco import ground_truth_by_image
from bestie.data.coco_dataset import CocoInstances, collate_detection
from bestie.data.manifest import load_manifest
from bestie.distributed import DistContext
from bestie.evaluate_split import predict_split, write_evaluation
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files
from bestie.io import read_json, write_tsv
from bestie.maskrcnn import LOSS_NAMES, MaskRCNNLosses, build_maskrcnn, predict_maskrcnn
from bestie.runtime import seed_everything, select_device
from bestie.stage import add_arguments, run_stage
from bestie.training import (
    LoopSettings, build_optimizer, iteration_batches, load_train_state, poly_lr, state_saver, train,
)

LOG_COLUMNS = ("step", "loss", *LOSS_NAMES.values(), "lr", "seconds")
# `maskrcnn` params that do not change the trained weights (the last three act at inference only):
# changing them still resumes.
NOT_IN_FINGERPRINT = ("resume", "workers", "log_every", "checkpoint_every", "score_thresh",
                      "detections_per_image", "mask_thresh")


def main(params: Params, args: argparse.Namespace) -> None:
    seed_everything(params.seed)
    device = select_device(args.device)
    manifest = load_manifest(Path(args.prepared) / "manifest.json")
    options = params.maskrcnn
    dataset = CocoInstances(args.annotations, manifest.image_paths("train"), flip=options.flip)
    model = build_maskrcnn(manifest.num_classes, options).to(device)
    config = {**to_dict(options), "supervision": params.supervision, "seed": params.seed}

    fingerprint = run_fingerprint(
        config, [Path(args.annotations), Path(args.prepared) / "manifest.json"], stage_code_files(Path(__file__)),
        ignore=NOT_IN_FINGERPRINT,
    )
    run = find_run_state(
        args.state_dir, stage="maskrcnn", kind="maskrcnn", fingerprint=fingerprint, resume=options.resume,
        class_names=manifest.class_names,
    )
    state = load_train_state(run, model)

    context = DistContext(0, 1, device)
    history = train(
        MaskRCNNLosses(model),
        iteration_batches(dataset, collate_detection, options.batch_size, state.iteration, options.iterations,
                          params.seed, context, options.workers),
        build_optimizer(options.optimizer, model.parameters(), options.lr, options.weight_decay),
        partial(poly_lr, total=options.iterations, warmup=options.warmup_iters, power=options.poly_power),
        LoopSettings(options.iterations, options.log_every, options.checkpoint_every, seed=params.seed,
                     lr_key="maskrcnn.lr", name="maskrcnn"),
        context, state=state,
        save_state=state_saver(run.path, model, kind="maskrcnn", config=config, class_names=manifest.class_names),
    )
    save_checkpoint(
        args.out, model.state_dict(), kind="maskrcnn", config=config, class_names=manifest.class_names
    )
    write_tsv(args.log, LOG_COLUMNS, history)

    model.eval()
    predictions = predict_split(
        lambda image, record: predict_maskrcnn(model, image, device, options.mask_thresh),
        manifest.val, manifest.class_names, manifest.category_ids, ground_truth_by_image(read_json(args.val_gt)),
        gallery_size=params.evaluate.gallery, desc="maskrcnn val",
    )
    write_evaluation(predictions, args.val_gt, out_dir=args.eval_out, metrics_path=args.metrics,
                     gallery_dir=args.gallery)
    run.path.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(
        parser,
        prepared="data/prepared",
        annotations="data/coco/train_pseudo.json",
        val_gt="data/eval/val_gt.json",
        out="data/models/maskrcnn.pt",
        log="metrics/maskrcnn/log.tsv",
        eval_out="data/eval/maskrcnn",
        metrics="metrics/maskrcnn.json",
        gallery="metrics/gallery/maskrcnn",
        state_dir="data/train_state",
        device="auto",
    )
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
