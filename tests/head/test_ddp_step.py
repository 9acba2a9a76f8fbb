"""Invariant 3: one optimizer step of a DDP backbone plus the head at world size 2 and 4 leaves
exactly the parameters that world size 1 leaves, for the same global batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from partial_fc import PartialFC, margins
from partial_fc.optim import RowSparseSGD
from tests.distributed import run_ranks

C, D_IN, D, GLOBAL_BATCH, STEPS = 103, 10, 8, 8, 2


def train(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)  # the same backbone initialisation on every rank
    backbone = nn.Sequential(nn.Linear(D_IN, 16), nn.PReLU(), nn.Linear(16, D)).double()  # BN-free
    model = DistributedDataParallel(backbone) if world_size > 1 else backbone
    head = PartialFC(C, D, margin=margins.build("arcface", scale=16.0), sample_rate=0.5, seed=3, init_std=0.5).double()
    opt_backbone = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_head = RowSparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    b = GLOBAL_BATCH // world_size
    for _ in range(STEPS):
        inputs = torch.randn(GLOBAL_BATCH, D_IN, generator=g, dtype=torch.float64)
        labels = torch.randint(0, C, (GLOBAL_BATCH,), generator=g)
        loss = head(model(inputs[rank * b : (rank + 1) * b]), labels[rank * b : (rank + 1) * b])
        loss.backward()
        opt_backbone.step()
        opt_head.step()
        opt_backbone.zero_grad()
        opt_head.zero_grad()
    return {"backbone": {k: v.detach() for k, v in backbone.state_dict().items()}, "head": head.weight.detach()}


@pytest.fixture(scope="module")
def single():
    return train(0, 1)


@pytest.mark.parametrize("world_size", [2, 4])
def test_data_parallel_step_equals_single_process(single, world_size):
    results = run_ranks(train, world_size)
    # fp64; only the order of a few sums differs (all-reduce, reduce-scatter)
    tol = dict(rtol=1e-10, atol=1e-12)
    for r in results:
        for key, value in single["backbone"].items():
            torch.testing.assert_close(r["backbone"][key], value, **tol)
    torch.testing.assert_close(torch.cat([r["head"] for r in results]), single["head"], **tol)
    assert not torch.equal(single["backbone"]["0.weight"], train_initial_weight())  # the step did something


def train_initial_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Linear(D_IN, 16).double().weight.detach()
