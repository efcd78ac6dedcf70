"""DVC stage `prepare`: check the dataset at `data.root`, write its manifest and COCO ground truth."""

import argparse
from pathlib import Path

from bestie.config import Params
from bestie.data.prepare import prepare_dataset
from bestie.io import atomic_dir, write_json
from bestie.stage import add_arguments, run_stage


def main(params: Params, args: argparse.Namespace) -> None:
    manifest, train_gt, val_coco = prepare_dataset(
        params.data.root, params.data.train_split, params.data.val_split
    )
    with atomic_dir(args.out, replace=True) as tmp:
        write_json(Path(tmp) / "manifest.json", manifest.to_json(), indent=None)
        write_json(Path(tmp) / "train_gt.json", train_gt, indent=None)
    write_json(args.val_gt, val_coco, indent=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser, out="data/prepared", val_gt="data/eval/val_gt.json")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
