"""HeadOptimizer: unscale and finite check under a loss scale, clip by the norm over all ranks'
shards, row-sparse update of the shard and dense update of a replicated parameter, against an
fp64 oracle on the whole matrix; on 1 and 2 gloo ranks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from partial_fc.comm import SingleProcess, make_collectives
from partial_fc.head.ranges import class_range
from partial_fc.optim import RowSparseSGD
from partial_fc.optim.head_optimizer import HeadOptimizer
from tests.distributed import run_ranks

C, D = 7, 3  # 7 classes: uneven shards at 2 ranks
LR, MU, WD, SCALE, MAX_NORM = 0.1, 0.9, 0.05, 1024.0, 0.5
SAMPLED = [[0, 2, 3, 6], [1, 2, 5]]  # the rows with a gradient at step 0 and 1


def _full_weight() -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _grads(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled gradients of the whole matrix (zero outside SAMPLED[step]) and of the scale."""
    g = torch.Generator().manual_seed(10 + step)
    full = torch.zeros(C, D, dtype=torch.float64)
    full[SAMPLED[step]] = torch.randn(len(SAMPLED[step]), D, generator=g, dtype=torch.float64)
    return full, torch.randn((), generator=g, dtype=torch.float64)


def _shard_grad(full: torch.Tensor, start: int, stop: int, *, times: float) -> torch.Tensor:
    """The head's kind of gradient: sparse COO over this shard's sampled rows, increasing indices."""
    rows = torch.tensor([r - start for r in range(start, stop) if full[r].any()], dtype=torch.int64)
    return torch.sparse_coo_tensor(rows[None], full[start:stop][rows] * times, (stop - start, D), check_invariants=True)


def _oracle(steps: int = 2) -> dict:
    """fp64 by hand: clip both gradients by their joint norm, SGD with momentum; weight decay
    and momentum only on the rows sampled in a step (lazy), none on the scale."""
    w, s = _full_weight(), torch.tensor(10.0, dtype=torch.float64)
    m_w, m_s = torch.zeros(C, D, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for step in range(steps):
        g, g_s = _grads(step)
        norm = math.sqrt(float(g.pow(2).sum() + g_s**2))
        factor = min(1.0, MAX_NORM / (norm + 1e-6))
        rows = SAMPLED[step]
        d = g[rows] * factor + WD * w[rows]
        m_w[rows] = MU * m_w[rows] + d
        w[rows] -= LR * m_w[rows]
        m_s = MU * m_s + g_s * factor
        s = s - LR * m_s
    return {"weight": w, "scale": s}


def _run(rank: int, world_size: int, steps: int = 2, bad_rank: int | None = None) -> dict:
    comm = make_collectives() if world_size > 1 else SingleProcess()
    start, stop = class_range(C, world_size, rank)
    weight = nn.Parameter(_full_weight()[start:stop].clone())
    scale = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))
    opt = HeadOptimizer(sharded=[weight], dense=[scale], name="sgd", lr=LR, momentum=MU, weight_decay=WD, comm=comm,
                        max_grad_norm=MAX_NORM, loss_scaling=True)
    applied = []
    for step in range(steps):
        full, g_s = _grads(step)
        weight.grad = _shard_grad(full, start, stop, times=SCALE)  # as the engine's backward leaves it
        scale.grad = g_s * SCALE  # replicated: the same on every rank
        if rank == bad_rank:
            weight.grad._values()[0, 0] = float("inf")
        applied.append(opt.step(loss_scale=SCALE))
        assert weight.grad is None and scale.grad is None  # zeroed whether applied or not
    return {"weight": weight.detach(), "scale": scale.detach(), "applied": applied, "state": opt.state_dict()}


@pytest.mark.parametrize("world_size", [1, 2])
def test_unscale_clip_and_step_equal_the_fp64_oracle(world_size):
    results = [_run(0, 1)] if world_size == 1 else run_ranks(_run, 2)
    want = _oracle()
    # fp64; the only difference from the oracle is the order of the norm's sums (all-reduce)
    tol = dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([r["weight"] for r in results]), want["weight"], **tol)
    for r in results:
        assert r["applied"] == [True, True]
        torch.testing.assert_close(r["scale"], want["scale"], **tol)
    assert not torch.equal(want["weight"], _full_weight())  # the clip did not zero the step


def test_an_overflow_on_one_rank_skips_the_step_on_every_rank():
    results = run_ranks(_run, 2, 1, 1)  # one step, rank 1's shard has an inf
    initial = _full_weight()
    for rank, r in enumerate(results):
        start, stop = class_range(C, 2, rank)
        assert r["applied"] == [False]
        torch.testing.assert_close(r["weight"], initial[start:stop], rtol=0, atol=0)
        assert float(r["scale"]) == 10.0


def test_no_step_when_the_backbone_skipped():
    weight = nn.Parameter(torch.ones(4, D))
    opt = HeadOptimizer(sharded=[weight], name="sgd", lr=LR, comm=SingleProcess(), loss_scaling=True)
    weight.grad = torch.ones(4, D)
    assert opt.step(loss_scale=2.0, backbone_applied=False) is False
    assert weight.grad is None and torch.equal(weight.detach(), torch.ones(4, D))


def test_without_other_parameters_it_is_the_row_sparse_optimizer():
    """No dense parameter, no clip, no loss scale: the step and the state dict are exactly
    those of RowSparseSGD, so checkpoints written before keep loading."""
    w_a, w_b = nn.Parameter(_full_weight()), nn.Parameter(_full_weight())
    opt = HeadOptimizer(sharded=[w_a], name="sgd", lr=LR, momentum=MU, weight_decay=WD, comm=SingleProcess())
    plain = RowSparseSGD([w_b], lr=LR, momentum=MU, weight_decay=WD)
    for step in range(2):
        full, _ = _grads(step)
        w_a.grad, w_b.grad = _shard_grad(full, 0, C, times=1.0), _shard_grad(full, 0, C, times=1.0)
        opt.set_lr(LR / (step + 1))
        for group in plain.param_groups:
            group["lr"] = LR / (step + 1)
        assert opt.step() is True
        plain.step()
        plain.zero_grad(set_to_none=True)
    torch.testing.assert_close(w_a.detach(), w_b.detach(), rtol=0, atol=0)
    mine, theirs = opt.state_dict(), plain.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys() == {0}
    torch.testing.assert_close(mine["state"][0]["momentum_buffer"], theirs["state"][0]["momentum_buffer"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_dict_numbers_the_shard_then_the_dense_parameters_and_round_trips(name):
    def build():
        weight, scale = nn.Parameter(_full_weight()), nn.Parameter(torch.tensor(10.0, dtype=torch.float64))
        opt = HeadOptimizer(sharded=[weight], dense=[scale], name=name, lr=LR, momentum=MU, weight_decay=WD,
                            comm=SingleProcess())
        return weight, scale, opt

    def step(weight, scale, opt, k):
        full, g_s = _grads(k)
        weight.grad, scale.grad = _shard_grad(full, 0, C, times=1.0), g_s.clone()
        opt.step()

    w1, s1, first = build()
    step(w1, s1, first, 0)
    saved = copy.deepcopy(first.state_dict())  # as from a file: no tensor shared with `first`
    assert sorted(saved["state"]) == [0, 1] and [g["params"] for g in saved["param_groups"]] == [[0], [1]]
    assert saved["param_groups"][1]["weight_decay"] == 0.0  # the scale takes no weight decay
    assert saved["param_groups"][0]["weight_decay"] == WD
    w2, s2, second = build()
    with torch.no_grad():
        w2.copy_(w1), s2.copy_(s1)
    second.load_state_dict(saved)
    step(w1, s1, first, 1)
    step(w2, s2, second, 1)
    torch.testing.assert_close(w2.detach(), w1.detach(), rtol=0, atol=0)
    torch.testing.assert_close(s2.detach(), s1.detach(), rtol=0, atol=0)
    assert set(second.state) == {w2, s2}  # one state view over both inner optimizers


def test_unknown_name_and_bad_clip_are_errors():
    weight = nn.Parameter(torch.ones(2, D))
    with pytest.raises(ValueError, match="unknown head optimizer 'lamb'; choose from"):
        HeadOptimizer(sharded=[weight], name="lamb", lr=LR, comm=SingleProcess())
    with pytest.raises(ValueError, match="max_grad_norm must be > 0 or None, got 0"):
        HeadOptimizer(sharded=[weight], name="sgd", lr=LR, comm=SingleProcess(), max_grad_norm=0)
