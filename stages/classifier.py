"""DVC stage `classifier`: train the PAM classifier on the training split's image-level labels."""

import argparse
import time

from bestie.checkpoint import save_checkpoint
from bestie.classification import build_classifier, train_classifier
from bestie.config import Params, to_dict
from bestie.data.datasets import ClassificationDataset
from bestie.data.manifest import load_manifest
from bestie.data.voc import VOCDataset
from bestie.io import write_metrics
from bestie.runtime import seed_everything, select_device
from bestie.stage import run_stage


def main(params: Params, manifest_path: str, out: str, metrics: str, device_name: str) -> None:
    cfg = params.classifier
    manifest = load_manifest(manifest_path)
    device = select_device(device_name)
    seed_everything(params.seed)

    common = dict(num_classes=manifest.num_classes, crop_size=cfg.crop_size, seed=params.seed)
    train_set = ClassificationDataset(
        VOCDataset(params.data.root, params.data.train_split), manifest.train,
        scale_range=(cfg.scale_min, cfg.scale_max), train=True, **common,
    )
    val_set = ClassificationDataset(
        VOCDataset(params.data.root, params.data.val_split), manifest.val, train=False, **common
    )
    model = build_classifier(manifest.num_classes, cfg.backbone, cfg.width, cfg.alpha, cfg.pretrained)

    start = time.perf_counter()
    results = train_classifier(model, train_set, val_set, cfg, device, seed=params.seed)
    print(
        f"classifier: {time.perf_counter() - start:.1f} s on {device}; val mAP {results['cls_map']:.1f}, "
        f"F1 macro {results['cls_f1_macro']:.1f}"
    )
    save_checkpoint(
        out, model.state_dict(), kind="pam", config=to_dict(cfg), class_names=manifest.class_names
    )
    write_metrics(metrics, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--out", default="data/models/pam.pt")
    parser.add_argument("--metrics", default="metrics/classifier.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args.manifest, args.out, args.metrics, args.device))
