"""DVC stage `synthesize`: generate the synthetic VOC2012-format dataset in the style `synthesize.style`
(with `synthesize.coco`, also in the COCO 2017 layout)."""

import argparse

from bestie.config import Params
from bestie.data.synthetic import generate, statistics_from_root
from bestie.data.synthetic.coco import voc_to_coco
from bestie.io import atomic_dir, write_metrics
from bestie.stage import add_arguments, run_stage


def main(params: Params, args: argparse.Namespace) -> None:
    with atomic_dir(args.out, replace=True) as tmp:
        generate(tmp, params.synthesize)
        stats = statistics_from_root(tmp, void_width=params.synthesize.void_width)
        if params.synthesize.coco:
            voc_to_coco(tmp, tmp, {"train": "train", "val": "val"})
    write_metrics(args.metrics, stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser, out="data/synthetic", metrics="metrics/dataset.json")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args))
