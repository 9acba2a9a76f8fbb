"""NormFace's learned scale: dL/ds through the sharded, chunked head equals the fp64 dense
oracle's at world sizes 1-3 (uneven class count, several tiles per rank), is bit-identical on
every rank, and the parameter is what the head's optimizer will see."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC, margins
from tests import reference
from tests.distributed import at_world_sizes
from tests.head.cases import INIT_STD, SEED, global_batch
from tests.head.sampling_oracle import sampled_classes

C, D, B, CHUNK = 1003, 12, 12, 97  # uneven shards at 2 and 3 ranks; 4-11 tiles per rank
RATE, STEP = 0.3, 5
INITIAL_SCALE = 10.0  # the authors' initial value


def make_head(rate: float) -> PartialFC:
    margin = margins.build("normface", scale=INITIAL_SCALE, learn_scale=True)
    head = PartialFC(C, D, margin=margin, sample_rate=rate, seed=SEED, chunk_size=CHUNK, init_std=INIT_STD,
                     backbone_grad_average=False).double()
    head.step = STEP
    return head


def head_results(rank: int, world_size: int) -> dict:
    x, labels = global_batch(C, D, B)
    b = B // world_size
    out = {}
    for rate in (1.0, RATE):
        head = make_head(rate)
        x_local = x[rank * b : (rank + 1) * b].clone().requires_grad_()
        loss = head(x_local, labels[rank * b : (rank + 1) * b])
        loss.backward()
        out[rate] = {"loss": loss.detach(), "grad_x": x_local.grad, "weight": head.weight.detach(),
                     "grad_w": head.weight.grad.to_dense(), "grad_s": head.margin.scale_param.grad.clone()}
    return out


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    return at_world_sizes(head_results)


def reference_grads(weight: torch.Tensor, classes=None):
    x, labels = global_batch(C, D, B)
    x, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    s = torch.tensor(INITIAL_SCALE, dtype=torch.float64, requires_grad=True)
    loss = reference.loss("normface", {"scale": s}, x, w, labels, classes=classes)
    loss.backward()
    return loss.detach(), x.grad, w.grad, s.grad


# fp64 on both sides: the head sums exponentials (and exponential-weighted logits) per tile and
# across ranks in another order than the oracle's logsumexp (~1e-14 relative); 1e-9 is far
# below a missing rank's share of dL/ds (>= 1e-2 relative here) and above rounding noise.
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_scale_gradient_matches_dense_fp64_reference(results, world_size):
    per_rank = [r[1.0] for r in results[world_size]]
    weight = torch.cat([r["weight"] for r in per_rank])
    ref_loss, ref_gx, ref_gw, ref_gs = reference_grads(weight)
    assert abs(float(ref_gs)) > 1e-2  # a real gradient, so a rank's missing share would show
    for r in per_rank:
        torch.testing.assert_close(r["loss"], ref_loss, **TOL)
        torch.testing.assert_close(r["grad_s"], ref_gs, **TOL)
        assert torch.equal(r["grad_s"], per_rank[0]["grad_s"])  # bit-identical: the replica stays in step
    torch.testing.assert_close(torch.cat([r["grad_x"] for r in per_rank]), ref_gx, **TOL)
    torch.testing.assert_close(torch.cat([r["grad_w"] for r in per_rank]), ref_gw, **TOL)


def test_sampled_scale_gradient_matches_reference_and_is_world_size_invariant(results):
    one = results[1][0][RATE]
    _, labels = global_batch(C, D, B)
    kept = sampled_classes(SEED, STEP, C, RATE, positives=labels.tolist())
    ref_loss, ref_gx, _, ref_gs = reference_grads(one["weight"], classes=[kept] * B)
    torch.testing.assert_close(one["loss"], ref_loss, **TOL)
    torch.testing.assert_close(one["grad_s"], ref_gs, **TOL)
    torch.testing.assert_close(one["grad_x"], ref_gx, **TOL)
    for world_size in (2, 3):
        for r in results[world_size]:
            torch.testing.assert_close(r[RATE]["grad_s"], one["grad_s"], **TOL)
            assert torch.equal(r[RATE]["grad_s"], results[world_size][0][RATE]["grad_s"])


def test_whole_head_passes_gradcheck_in_the_scale():
    head = PartialFC(37, 5, margin=margins.build("normface", scale=3.0, learn_scale=True), chunk_size=8,
                     init_std=0.5).double()
    head.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 36, 5, 5, 20, 11])
    fn = lambda s: torch.func.functional_call(head, {"margin.scale_param": s}, (x, labels))  # noqa: E731
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (s,), nondet_tol=1e-12)


def test_the_parameter_is_what_the_head_optimizer_sees():
    fixed = PartialFC(10, 4, margin="normface")
    assert not any(n.startswith("margin.") for n, _ in fixed.named_parameters())  # the default adds nothing
    learned = PartialFC(10, 4, margin=margins.build("normface", scale=INITIAL_SCALE, learn_scale=True))
    params = dict(learned.named_parameters())
    assert list(params) == [n for n, _ in fixed.named_parameters()] + ["margin.scale_param"]
    s = params["margin.scale_param"]
    assert s.requires_grad and s.shape == () and float(s.detach()) == INITIAL_SCALE
    assert "margin.scale_param" in learned.state_dict()  # checkpoints with the head
    loss = learned(torch.randn(4, 4), torch.tensor([0, 1, 2, 9]))
    loss.backward()
    assert s.grad is not None and s.grad.layout == torch.strided and torch.isfinite(s.grad)


def test_scale_is_kept_above_its_minimum():
    margin = margins.build("normface", scale=1.0, learn_scale=True, scale_min=0.5)
    head = PartialFC(10, 4, margin=margin).double()
    with torch.no_grad():
        margin.scale_param.fill_(0.1)
    x, labels = torch.randn(4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 9])
    loss = head(x, labels)
    loss.backward()
    assert float(margin.scale_param.grad) == 0.0  # d max(s, s_min)/ds = 0 below the minimum
    w = head.weight.detach()
    torch.testing.assert_close(loss.detach(), reference.loss("normface", {"scale": 0.5}, x, w, labels), rtol=1e-12, atol=0)


@pytest.mark.parametrize("params,match", [({"learn_scale": "yes"}, "learn_scale"), ({"scale_min": 0.0}, "scale_min"),
                                          ({"scale": 4.0, "scale_min": 5.0}, "scale_min")])
def test_bad_scale_parameters_name_the_value(params, match):
    with pytest.raises(ValueError, match=match):
        margins.build("normface", **params)


@pytest.mark.parametrize("chunk", [64, 2048])
def test_learned_scale_adds_at_most_one_bounded_scratch(chunk):
    from tests.head.test_memory_bound import LogitTracker

    num_classes, dim, batch = 3001, 8, 48
    head = PartialFC(num_classes, dim, margin=margins.build("normface", scale=10.0, learn_scale=True), chunk_size=chunk)
    x = torch.randn(batch, dim, requires_grad=True)
    tracker = LogitTracker(batch, dim)
    with tracker:
        head(x, torch.randint(0, num_classes, (batch,))).backward()
    # one tile plus the (min(chunk, 1024) x B) scratch of sum_j exp(u) u
    assert batch * chunk < tracker.peak_logits <= batch * (chunk + min(chunk, 1024))
