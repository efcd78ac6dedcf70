"""The README's headline rows as mean and spread over seeds, from DVC experiments.

    python benchmarks/seeds.py --run    # run every missing experiment (dvc exp run --temp; hours)
    python benchmarks/seeds.py          # print the table of the experiments already run
    python benchmarks/seeds.py --rows cls-heldout_looks --seeds 3407 1   # some rows and seeds

Each row and seed is one experiment named ``<row>-s<seed>``: the default params with the
row's ``-S`` overrides and ``-S seed=<seed>`` (the seed of every stage: classifier, BESTIE and
Mask R-CNN training); a row may read its seed-3407 run from ``weak_masks.py``'s experiment of the
same params instead. DVC's run cache makes a run whose stages already ran with the same
inputs (e.g. the default ``dvc repro``, or ``cls`` for ``cls-mrcnn``) a lookup, not a
re-computation. Prints a Markdown table: mean ± sample standard deviation over the seeds,
and each seed's value; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
SEEDS = (3407, 1, 2)
METRICS = ("voc_map25", "voc_map50", "voc_map70", "coco_ap")


class Row(NamedTuple):
    name: str  # experiment prefix
    label: str
    overrides: tuple[str, ...]  # `-S` values
    target: str  # the stage `dvc exp run` reproduces
    metrics_file: str
    # The experiment of the same params at the params' own seed (3407), when another benchmark
    # already ran it (weak_masks.py): read instead of run again.
    default_seed_run: str | None = None


ROWS = (
    Row("cls", "BESTIE, image-level (`cls`)", (), "evaluate", "metrics/bestie.json"),
    Row("norefine", "BESTIE, `cls`, self-refinement off", ("train.refine=false",), "evaluate", "metrics/bestie.json"),
    Row("point", "BESTIE, point", ("supervision=point",), "evaluate", "metrics/bestie.json"),
    Row("full", "BESTIE, full masks (upper bound)", ("supervision=full",), "evaluate", "metrics/bestie.json"),
    Row("cls-mrcnn", "BESTIE + Mask R-CNN, `cls`", (), "maskrcnn", "metrics/maskrcnn.json"),
    Row("point-mrcnn", "BESTIE + Mask R-CNN, point", ("supervision=point",), "maskrcnn", "metrics/maskrcnn.json"),
    # Issue 20's lever on the held-out looks: the segmentation loss on every pixel, against the default.
    Row("cls-heldout_looks", "BESTIE, `cls`, `heldout_looks`", ("synthesize.style=heldout_looks",), "evaluate",
        "metrics/bestie.json", "wm-cls-heldout_looks-maskrcnn"),
    Row("cls-seg-all-heldout_looks", "BESTIE, `cls`, `heldout_looks`, segmentation loss on every pixel",
        ("synthesize.style=heldout_looks", "train.hard_pixel_ratio=1.0"), "evaluate", "metrics/bestie.json",
        "wm-cls-seg-all-heldout_looks"),
    Row("cls-seg-half-heldout_looks", "BESTIE, `cls`, `heldout_looks`, segmentation loss on the hardest half of the pixels",
        ("synthesize.style=heldout_looks", "train.hard_pixel_ratio=0.5"), "evaluate", "metrics/bestie.json",
        "wm-cls-seg-half-heldout_looks"),
    Row("cls-seg-late-half-heldout_looks",
        "BESTIE, `cls`, `heldout_looks`, segmentation loss on the hardest 20 %, the hardest half from iteration 900",
        ("synthesize.style=heldout_looks", "train.late_hard_pixel_ratio=0.5"), "evaluate", "metrics/bestie.json",
        "wm-cls-seg-late-half-heldout_looks"),
    Row("point-heldout_looks", "BESTIE, point, `heldout_looks`", ("supervision=point", "synthesize.style=heldout_looks"),
        "evaluate", "metrics/bestie.json", "wm-point-heldout_looks-maskrcnn"),
    Row("point-seg-all-heldout_looks", "BESTIE, point, `heldout_looks`, segmentation loss on every pixel",
        ("supervision=point", "synthesize.style=heldout_looks", "train.hard_pixel_ratio=1.0"), "evaluate",
        "metrics/bestie.json", "wm-point-seg-all-heldout_looks"),
)


def run_dvc(*args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # stderr passes through: a failed run says why.
    return subprocess.run(["dvc", *args], cwd=REPO, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout


def experiment_metrics() -> dict[str, dict[str, dict]]:
    """{experiment name: {metrics file: metrics}} of the finished experiments of every commit (the
    newest commit's wins a name). A running (or killed) experiment shows its baseline's files."""
    found: dict[str, dict[str, dict]] = {}
    for commit in json.loads(run_dvc("exp", "show", "--json", "--all-commits")):
        for experiment in commit.get("experiments") or []:
            if experiment.get("executor"):
                continue
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                if revision.get("name") and data.get("metrics"):
                    found.setdefault(revision["name"], {p: m.get("data", {}) for p, m in data["metrics"].items()})
    return found


def experiment_names(row: Row, seed: int) -> list[str]:
    """The experiments that hold a row's run at ``seed``, its own name first."""
    return [f"{row.name}-s{seed}", *([row.default_seed_run] if row.default_seed_run and seed == SEEDS[0] else [])]


def run_missing(rows: tuple[Row, ...], seeds: tuple[int, ...]) -> None:
    done = experiment_metrics()
    for row in rows:
        for seed in seeds:
            if any(name in done for name in experiment_names(row, seed)):
                continue
            name = f"{row.name}-s{seed}"
            overrides = [arg for value in (*row.overrides, f"seed={seed}") for arg in ("-S", value)]
            print(f"running {name}", file=sys.stderr, flush=True)
            run_dvc("exp", "run", "--temp", "-n", name, *overrides, row.target)


def _row_metrics(found: dict[str, dict[str, dict]], row: Row, seed: int) -> dict | None:
    """A row's metrics for one seed, None if its experiment has not run.

    Only the row's own experiment counts: an experiment with another target carries the
    baseline's files for the stages it did not reproduce (``maskrcnn`` does not run
    ``evaluate``).
    """
    return next((found[name][row.metrics_file] for name in experiment_names(row, seed)
                 if row.metrics_file in found.get(name, {})), None)


def table(rows: tuple[Row, ...], seeds: tuple[int, ...]) -> list[str]:
    found = experiment_metrics()
    seed_list = ", ".join(map(str, seeds))
    lines = [
        f"| run | {' | '.join(METRICS)} | voc_map50 by seed ({seed_list}) |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for row in rows:
        runs = [_row_metrics(found, row, seed) for seed in seeds]
        done = [r for r in runs if r]
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in done]
            if len(values) >= 2:
                cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
            else:
                cells.append(f"{values[0]:.1f}" if values else "–")
        by_seed = " / ".join(f"{r['voc_map50']:.1f}" if r else "–" for r in runs)
        lines.append(f"| {row.label} | {' | '.join(cells)} | {by_seed} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the experiments that are missing first")
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="only these rows")
    parser.add_argument("--seeds", nargs="+", type=int, choices=SEEDS, default=list(SEEDS), help="only these seeds")
    args = parser.parse_args()
    rows = tuple(r for r in ROWS if not args.rows or r.name in args.rows)
    seeds = tuple(seed for seed in SEEDS if seed in args.seeds)
    if args.run:
        run_missing(rows, seeds)
    print("\n".join(table(rows, seeds)))


if __name__ == "__main__":
    main()
