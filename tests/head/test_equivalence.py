"""Invariants 1 and 2: the sharded head equals an independent fp64 dense reference at world
sizes 1-4 (uneven class count), and at sample_rate < 1 every world size computes the same
loss and gradients as one rank."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC, margins
from tests import reference
from tests.distributed import run_ranks
from tests.head.cases import INIT_STD, MARGINS, SEED, STEP, global_batch
from tests.head.sampling_oracle import sampled_classes

C, D, B, CHUNK = 1003, 12, 12, 97  # 1003 = 7 * 11 * 13: uneven shards at 2, 3 and 4 ranks
RATE = 0.3


def head_results(rank: int, world_size: int) -> dict:
    """Loss and gradients of every margin at sample rates 1 and RATE on this rank."""
    x, labels = global_batch(C, D, B)
    b = B // world_size
    out = {}
    for rate in (1.0, RATE):
        for name, params in MARGINS.items():
            head = PartialFC(C, D, margin=margins.build(name, **params), sample_rate=rate, seed=SEED,
                             chunk_size=CHUNK, init_std=INIT_STD, backbone_grad_average=False).double()
            head.step = STEP
            x_local = x[rank * b : (rank + 1) * b].clone().requires_grad_()
            loss = head(x_local, labels[rank * b : (rank + 1) * b])
            loss.backward()
            out[name, rate] = {
                "loss": loss.detach(), "grad_x": x_local.grad, "weight": head.weight.detach(),
                "grad_w": head.weight.grad.to_dense(), "range": head.class_range,
            }
    return out


def assemble(per_rank: list[dict], key) -> dict:
    return {
        "losses": [r[key]["loss"] for r in per_rank],
        "grad_x": torch.cat([r[key]["grad_x"] for r in per_rank]),
        "weight": torch.cat([r[key]["weight"] for r in per_rank]),
        "grad_w": torch.cat([r[key]["grad_w"] for r in per_rank]),
    }


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    out = {1: [head_results(0, 1)]}
    for world_size in (2, 3, 4):
        out[world_size] = run_ranks(head_results, world_size)
    return out


def reference_grads(name: str, weight: torch.Tensor, classes=None):
    x, labels = global_batch(C, D, B)
    x = x.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = reference.loss(name, MARGINS[name], x, w, labels, step=STEP, classes=classes)
    loss.backward()
    return loss.detach(), x.grad, w.grad


# fp64 on both sides; the head sums ~1000 exponentials per row in tiles and across ranks in
# another order than torch.logsumexp, which moves results by ~1e-14 relative. 1e-9 is far
# below any formula or scaling error (those show up at >= 1e-4) and above rounding noise.
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("name", list(MARGINS))
def test_full_softmax_matches_dense_fp64_reference(results, world_size, name):
    got = assemble(results[world_size], (name, 1.0))
    ref_loss, ref_gx, ref_gw = reference_grads(name, got["weight"])
    for loss in got["losses"]:  # the same value on every rank
        torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(got["grad_x"], ref_gx, **TOL)
    torch.testing.assert_close(got["grad_w"], ref_gw, **TOL)


@pytest.mark.parametrize("name", list(MARGINS))
def test_sampled_softmax_matches_reference_on_the_sampled_classes(results, name):
    got = assemble(results[1], (name, RATE))
    _, labels = global_batch(C, D, B)
    kept = sampled_classes(SEED, STEP, C, RATE, positives=labels.tolist())
    ref_loss, ref_gx, ref_gw = reference_grads(name, got["weight"], classes=[kept] * B)
    torch.testing.assert_close(got["losses"][0], ref_loss, **TOL)
    torch.testing.assert_close(got["grad_x"], ref_gx, **TOL)
    torch.testing.assert_close(got["grad_w"], ref_gw, **TOL)
    unsampled = sorted(set(range(C)) - set(kept))
    assert torch.count_nonzero(got["grad_w"][unsampled]) == 0


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("name", list(MARGINS))
def test_sampled_softmax_is_world_size_invariant(results, world_size, name):
    one = assemble(results[1], (name, RATE))
    many = assemble(results[world_size], (name, RATE))
    torch.testing.assert_close(many["weight"], one["weight"], rtol=0, atol=0)  # init from (seed, c) alone
    for loss in many["losses"]:
        torch.testing.assert_close(loss, one["losses"][0], **TOL)
    torch.testing.assert_close(many["grad_x"], one["grad_x"], **TOL)
    torch.testing.assert_close(many["grad_w"], one["grad_w"], **TOL)
