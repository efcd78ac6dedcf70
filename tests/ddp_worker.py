"""Run by tests/test_distributed.py under torchrun: a few DDP iterations on the fake data."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bestie.distributed import init_distributed, shutdown_distributed  # noqa: E402
from tests.test_training import tiny_model, train_tiny  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    context = init_distributed("cpu")
    model = tiny_model()
    steps = [row["step"] for row in train_tiny(model, context=context)]
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"world_size": context.world_size, "weights": weights, "steps": steps}, out / f"rank{context.rank}.pt")
    shutdown_distributed()
