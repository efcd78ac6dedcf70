"""DVC stage `prepare`: read the dataset at `data.root` in its `data.format` (the only stage that
does), write its manifest, ground truth and label maps."""

import argparse

from bestie.config import Params
from bestie.data.prepare import prepare_dataset
from bestie.data.sources import SOURCES
from bestie.stage import add_arguments, run_stage


def main(params: Params, args: argparse.Namespace) -> None:
    prepare_dataset(SOURCES[params.data.format].from_params(params.data), args.out, args.val_gt)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser, out="data/prepared", val_gt="data/eval/val_gt.json")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
