"""The BESTIE network per backbone on this machine: size, training memory and iteration time.

    python benchmarks/backbones.py                       # all five backbones (a few minutes)
    python benchmarks/backbones.py --backbones small hrnet_w32

Prints a Markdown table; asserts nothing. Per backbone (ImageNet weights do not change any of it):
- parameters of the backbone and of the whole network (20 classes, as VOC);
- training memory at batch 1: the peak resident memory of one training iteration (forward,
  losses with self-refinement, backward, Adam step) above the process before the network was
  built, so weights, gradients, Adam state and activations; at crop 128 and at the paper's 416.
  Each figure comes from a fresh process, so one measurement's peak does not hide the next
  (Linux: read from /proc);
- time of one training iteration at crop 128, batch 8 (the default params), median of 3 after
  a warm-up, on the CPU threads torch uses here.
The header gives the load average: the machine may be shared, which slows the times (not the sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import median_ms, training_step  # noqa: E402

from bestie.models import BestieNet, build_backbone  # noqa: E402

BACKBONES = ("small", "resnet50", "resnet101", "hrnet_w32", "hrnet_w48")
PAPER = "hrnet_w48"  # the published results' backbone (the published code also ships hrnet_w32)
NUM_CLASSES = 20


def _peak_rss_mib() -> float:
    """This process's peak resident memory (Linux). Not ``ru_maxrss``: a child started from a
    big parent inherits the parent's peak through exec."""
    with open("/proc/self/status") as status:
        (kib,) = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    return int(kib) / 1024


def measure(backbone: str, crop_size: int, batch_size: int, repeat: int) -> dict:
    """In this process: parameter counts, then one iteration's memory, or ``repeat`` timed ones."""
    before = _peak_rss_mib()
    step = training_step(NUM_CLASSES, backbone, batch_size, crop_size)
    result = {}
    if repeat:
        result["ms"] = median_ms(step, repeat, warmup=1)
    else:
        step()
        result["memory_mib"] = _peak_rss_mib() - before
    return result


def _in_child(backbone: str, crop_size: int, batch_size: int, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", backbone, str(crop_size), str(batch_size), str(repeat)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def _millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backbone, *numbers = args.child
        print(json.dumps(measure(backbone, *map(int, numbers))))
        return


    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} (1 min) at the start\n")
    print("| backbone | parameters: backbone / network | training memory, batch 1: crop 128 / 416 "
          "| training iteration, crop 128, batch 8 |")
    print("|---|---|---|---|")
    for name in args.backbones:
        backbone = _millions(build_backbone(name))
        network = _millions(BestieNet(NUM_CLASSES, name))
        small = _in_child(name, 128, 1, 0)["memory_mib"]
        large = _in_child(name, 416, 1, 0)["memory_mib"]
        ms = _in_child(name, 128, 8, 3)["ms"]
        label = f"{name} (the paper's)" if name == PAPER else name
        print(f"| {label} | {backbone:.1f} M / {network:.1f} M | {small:.0f} MiB / {large:.0f} MiB "
              f"| {ms / 1000:.2f} s |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
