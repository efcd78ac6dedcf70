"""DVC stage `synthesize`: generate the embedded synthetic VOC2012-format dataset."""

import argparse

from bestie.config import Params
from bestie.data.synthetic import generate, statistics_from_root
from bestie.io import atomic_dir, write_metrics
from bestie.stage import run_stage


def main(params: Params, out: str, metrics: str) -> None:
    with atomic_dir(out, replace=True) as tmp:
        generate(tmp, params.synthesize)
        stats = statistics_from_root(tmp, void_width=params.synthesize.void_width)
    write_metrics(metrics, stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--metrics", default="metrics/dataset.json")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args.out, args.metrics))
