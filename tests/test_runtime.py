from __future__ import annotations

import pytest
import torch

from bestie.errors import BestieError
from bestie.runtime import autocast, seed_everything, select_device


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BestieError, match="unknown device"):
        select_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(BestieError, match="CUDA is not available"):
            select_device(name)


def test_seed_everything_repeats_random_streams():
    import random

    import numpy as np

    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(7)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_autocast_is_a_no_op_on_cpu():
    x = torch.rand(4, 4)
    with autocast(torch.device("cpu"), enabled=True):
        assert (x @ x).dtype == torch.float32
