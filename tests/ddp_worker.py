"""Run by tests/test_distributed.py under torchrun: a few DDP iterations on the fake data."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bestie.data.instance_dataset import collate_samples  # noqa: E402
from bestie.distributed import init_distributed, shutdown_distributed  # noqa: E402
from bestie.engine import train_bestie  # noqa: E402
from tests.fake_data import NUM_CLASSES, FakeBestieData  # noqa: E402
from tests.test_engine import TINY, tiny_model  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    context = init_distributed("cpu")
    steps = []
    model = train_bestie(tiny_model(), FakeBestieData(), collate_samples, TINY, "cls", NUM_CLASSES, context,
                         seed=0, log=lambda step, scalars: steps.append(step))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"world_size": context.world_size, "weights": weights, "steps": steps}, out / f"rank{context.rank}.pt")
    shutdown_distributed()
