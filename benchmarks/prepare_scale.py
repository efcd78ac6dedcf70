"""The `prepare` stage at scale: a COCO-format set of N generated images, time and peak memory.

    python benchmarks/prepare_scale.py --images 20000 [--val 1000] [--workdir /tmp/prepare_scale]

Generates the embedded synthetic dataset (N training, `--val` validation images; about one
image in ten seconds of the table's time goes to making it, not measured) in the VOC layout,
writes it again in the COCO 2017 layout (`bestie.data.synthetic.coco`, images hard-linked),
then measures, each in a fresh process:

- `prepare` on the COCO layout and on the VOC layout of the same images: wall time, time per
  1,000 images and peak resident memory (`/usr/bin/time -v`, else the child's getrusage);
- `dvc status` cost on the COCO root: a one-stage DVC project depending on the root folder,
  `dvc repro` (hashes every file once) and then `dvc status` (file stats against DVC's state
  cache), and the same with the stage depending on the annotation files only.

Prints a Markdown table; asserts nothing. The work folder is kept (rerun with `--reuse` to skip
generating it again).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bestie.config import SynthesizeParams
from bestie.data.synthetic import generate
from bestie.data.synthetic.coco import COCO_FILES, voc_to_coco

REPO = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")


def run_measured(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak resident MiB of the process)."""
    use_time = TIME.is_file()
    full = [str(TIME), "-v", *command] if use_time else command
    env = dict(os.environ, PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1", TQDM_DISABLE="1")
    start = time.perf_counter()
    result = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    if use_time:
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def prepare(workdir: Path, data: dict, name: str) -> tuple[float, float]:
    project = workdir / f"project_{name}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    return run_measured([sys.executable, str(REPO / "stages/prepare.py")], project)


def dvc_status(workdir: Path, deps: list[str]) -> tuple[float, float]:
    """(seconds of the first `dvc repro`, seconds of the next `dvc status`) of a one-stage DVC
    project in ``workdir`` whose stage depends on ``deps`` (paths relative to it)."""
    if not (workdir / ".dvc").is_dir():
        for command in (["git", "init", "-q"], [str(Path(sys.executable).parent / "dvc"), "init", "-q"]):
            subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    (workdir / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "true", "deps": deps}}}))
    (workdir / "dvc.lock").unlink(missing_ok=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    hashed, _ = run_measured([dvc, "repro", "-q"], workdir)
    status, _ = run_measured([dvc, "status", "-q"], workdir)
    return hashed, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="training images")
    parser.add_argument("--val", type=int, default=None, help="validation images (default: images / 10)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/prepare_scale"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing generated set")
    args = parser.parse_args()
    num_val = args.val or max(1, args.images // 10)
    voc_root, coco_root = args.workdir / "voc", args.workdir / "coco"
    if not (args.reuse and (coco_root / COCO_FILES["val"][0]).is_file()):
        shutil.rmtree(args.workdir, ignore_errors=True)
        voc_root.mkdir(parents=True)
        start = time.perf_counter()
        generate(voc_root, SynthesizeParams(num_train=args.images, num_val=num_val))
        voc_to_coco(voc_root, coco_root, {"train": "train", "val": "val"})
        print(f"generated {args.images} + {num_val} images in {time.perf_counter() - start:.0f} s\n")

    total = args.images + num_val
    rows = []
    for name, data in (("coco", {"format": "coco", "root": str(coco_root)}), ("voc", {"root": str(voc_root)})):
        seconds, peak = prepare(args.workdir, data, name)
        rows.append((f"prepare, {name} layout", f"{seconds:.1f} s", f"{1000 * seconds / total:.1f} s", f"{peak:.0f} MiB"))
    annotations = [f"coco/{COCO_FILES[s][0]}" for s in ("train", "val")]
    for what, deps in (("the root folder", ["coco"]), ("the annotation files", annotations)):
        hashed, status = dvc_status(args.workdir, deps)
        rows.append((f"dvc, stage depending on {what}: first repro / then status", f"{hashed:.1f} s / {status:.1f} s", "", ""))

    print(f"{args.images} train + {num_val} val images; COCO root {folder_mib(coco_root):.0f} MiB on disk\n")
    print("| measured | wall time | per 1,000 images | peak memory |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
