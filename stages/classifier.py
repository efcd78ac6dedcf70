"""DVC stage `classifier`: train the PAM classifier on the training split's image-level labels.

An interrupted run resumes from its last epoch's state checkpoint under `--state-dir` when the
params, inputs and code are the same; the final model is written atomically at the end.
"""

import argparse
import time
from pathlib import Path

from bestie.checkpoint import save_checkpoint
from bestie.classification import build_classifier, epoch_loss, fit_classifier, predict_logits
from bestie.config import Params, to_dict
from bestie.data.datasets import ClassificationDataset
from bestie.data.manifest import load_manifest
from bestie.distributed import DistContext
from bestie.fingerprint import find_run_state, run_fingerprint, stage_code_files
from bestie.metrics.classification import classification_metrics
from bestie.io import write_metrics
from bestie.runtime import seed_everything, select_device
from bestie.stage import add_arguments, run_stage
from bestie.training import load_train_state, state_saver

# `classifier` params that do not change the trained weights: changing them still resumes.
NOT_IN_FINGERPRINT = ("workers",)


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.classifier
    manifest = load_manifest(args.manifest)
    device = select_device(args.device)
    seed_everything(params.seed)

    common = dict(num_classes=manifest.num_classes, crop_size=cfg.crop_size, seed=params.seed)
    train_set = ClassificationDataset(
        manifest.train, scale_range=(cfg.scale_min, cfg.scale_max), train=True, **common
    )
    val_set = ClassificationDataset(manifest.val, train=False, **common)
    model = build_classifier(manifest.num_classes, cfg.backbone, cfg.width, cfg.alpha, cfg.pretrained).to(device)
    config = to_dict(cfg)

    fingerprint = run_fingerprint(
        {**config, "seed": params.seed}, [Path(args.manifest)],  # the manifest names the images
        stage_code_files(Path(__file__)), ignore=NOT_IN_FINGERPRINT,
    )
    # Resumed at epoch boundaries only, where the shuffling generator's state is saved.
    run = find_run_state(
        args.state_dir, stage="classifier", kind="pam", fingerprint=fingerprint, resume=True,
        class_names=manifest.class_names,
    )
    state = load_train_state(run, model)

    start = time.perf_counter()
    history, steps = fit_classifier(
        model, train_set, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, lr_steps=cfg.lr_steps,
        optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, pretrained=cfg.pretrained, seed=params.seed,
        workers=cfg.workers, context=DistContext(0, 1, device), state=state,
        save_state=state_saver(run.path, model, kind="pam", config=config, class_names=manifest.class_names),
    )
    logits, targets = predict_logits(model, val_set, device)  # after the last epoch: no model selection
    results = {**classification_metrics(logits, targets),
               "train_loss": epoch_loss([row["loss"] for row in history[-steps:]])}
    print(
        f"classifier: {time.perf_counter() - start:.1f} s on {device}; val mAP {results['cls_map']:.1f}, "
        f"F1 macro {results['cls_f1_macro']:.1f}"
    )
    save_checkpoint(
        args.out, model.state_dict(), kind="pam", config=config, class_names=manifest.class_names
    )
    write_metrics(args.metrics, results)
    run.path.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(
        parser,
        manifest="data/prepared/manifest.json",
        out="data/models/pam.pt",
        metrics="metrics/classifier.json",
        state_dir="data/train_state",
        device="auto",
    )
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
