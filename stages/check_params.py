"""DVC stage `check_params`: validate the whole params file before any stage works.

Every other stage descends from this one (`synthesize` and `prepare` depend on its output),
and it depends on `params.yaml` as a whole file, so any edit of the params file (a new value,
a misspelled section, an `-S` of `dvc exp run`) runs it first. A refused value stops
`dvc repro` here with one line naming the key, before DVC removes any other stage's outputs:
a bad value never costs a previous result.

The output holds a fixed text, so a valid edit changes nothing downstream by itself; each
stage still re-runs when a params section it lists changes.
"""

import argparse

from bestie.io import atomic_file
from bestie.stage import run_stage

CHECKED = "params.yaml passed validation\n"


def main(out: str) -> None:
    """Record that the params file passed (``run_stage`` validated it completely)."""
    with atomic_file(out) as handle:
        handle.write(CHECKED)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/params_checked.txt")
    args = parser.parse_args()
    run_stage(lambda _params: main(args.out))
