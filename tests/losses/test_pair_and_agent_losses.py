"""Every loss equals an independent float64 loop oracle at world sizes 1, 2 and 3: the same
value on every rank, the gradient w.r.t. every rank's embeddings and every agent row."""

from __future__ import annotations

import pytest
import torch

from partial_fc.losses import CContrastiveLoss, ContrastiveLoss, CTripletLoss, TripletLoss
from partial_fc.head.ranges import class_range
from partial_fc.optim import RowSparseSGD
from tests.distributed import run_ranks
from tests.losses import oracle
from tests.losses.cases import CASES, CHUNK, C, D, B, SEED, global_batch


def build(kind: str, kwargs: dict, **common):
    if kind == "triplet":
        return TripletLoss(**kwargs, **common)
    if kind == "contrastive":
        return ContrastiveLoss(**kwargs, **common)
    cls = CContrastiveLoss if kind == "c_contrastive" else CTripletLoss
    return cls(C, D, seed=SEED, chunk_size=CHUNK, **kwargs, **common).double()


def loss_results(rank: int, world_size: int, grad_average: bool = False) -> dict:
    x, labels = global_batch()
    b = B // world_size
    out = {}
    for name, (kind, kwargs) in CASES.items():
        loss_fn = build(kind, kwargs, backbone_grad_average=grad_average)
        x_local = x[rank * b : (rank + 1) * b].clone().requires_grad_()
        loss = loss_fn(x_local, labels[rank * b : (rank + 1) * b])
        loss.backward()
        res = {"loss": loss.detach(), "grad_x": x_local.grad}
        if kind.startswith("c_"):
            grad = loss_fn.weight.grad
            res.update(weight=loss_fn.weight.detach(), grad_w=grad.to_dense(), sparse=grad.is_sparse,
                       rows=grad._indices()[0].clone())
        out[name] = res
    return out


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    out = {1: [loss_results(0, 1)]}
    for world_size in (2, 3):
        out[world_size] = run_ranks(loss_results, world_size)
    return out


def oracle_grads(name: str, weight: torch.Tensor | None):
    kind, kwargs = CASES[name]
    x, labels = global_batch()
    x = x.clone().requires_grad_()
    y = labels.tolist()
    if kind == "triplet":
        loss = oracle.triplet_loss(x, y, kwargs["mining"], kwargs["margin"], kwargs.get("semihard_fallback", "hardest"))
        loss.backward()
        return loss.detach(), x.grad, None
    if kind == "contrastive":
        loss = oracle.contrastive_loss(x, y, kwargs["margin"])
        loss.backward()
        return loss.detach(), x.grad, None
    margin = kwargs.get("margin", 1.0 if kind == "c_contrastive" else 0.8)
    w = weight.clone().requires_grad_()
    loss, active, inactive = oracle.agent_loss(x, w, y, kind.removeprefix("c_"), margin)
    assert active > 0 and inactive > 0, "test data must exercise both sides of the hinge"
    loss.backward()
    return loss.detach(), x.grad, w.grad


# fp64 both sides. The module gets distances as 2 - 2 cos and sums in another order than the
# loops, and the contrastive loss adds 1e-12 under the square root: differences are ~1e-14.
# 1e-9 is far below any wrong triplet, factor or missing term (>= 1e-3 here).
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_match_the_loop_oracle(results, world_size, name):
    per_rank = [r[name] for r in results[world_size]]
    weight = torch.cat([r["weight"] for r in per_rank]) if "weight" in per_rank[0] else None
    ref_loss, ref_gx, ref_gw = oracle_grads(name, weight)
    for r in per_rank:   # the same value on every rank, bit for bit
        assert torch.equal(r["loss"], per_rank[0]["loss"])
    torch.testing.assert_close(per_rank[0]["loss"], ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([r["grad_x"] for r in per_rank]), ref_gx, **TOL)
    if ref_gw is not None:
        assert all(r["sparse"] for r in per_rank)
        torch.testing.assert_close(torch.cat([r["grad_w"] for r in per_rank]), ref_gw, **TOL)


def test_agents_are_sharded_like_the_head_and_sparse_rows_are_the_touched_ones(results):
    one = results[1][0]["c_triplet"]
    for world_size in (2, 3):
        many = results[world_size]
        torch.testing.assert_close(torch.cat([r["c_triplet"]["weight"] for r in many]), one["weight"], rtol=0, atol=0)
        sizes = [r["c_triplet"]["weight"].shape[0] for r in many]
        assert sizes == [stop - start for start, stop in (class_range(C, world_size, k) for k in range(world_size))]
    grad = one["grad_w"]
    touched = (grad != 0).any(1).nonzero().squeeze(1)
    assert torch.equal(one["rows"], touched)


def test_fallback_choice_matters_on_this_batch():
    # otherwise the "easiest" case could not tell the two fallbacks apart
    x, labels = global_batch()
    hard = oracle.mined_triplets(x, labels.tolist(), "semihard", 0.2, "hardest")
    easy = oracle.mined_triplets(x, labels.tolist(), "semihard", 0.2, "easiest")
    assert hard != easy


def test_backbone_grad_average_multiplies_the_embedding_gradient_by_n_once(results):
    plain = results[2]
    averaged = run_ranks(loss_results, 2, True)
    for name in ("batch_hard", "c_triplet"):
        for p, a in zip(plain, averaged):
            torch.testing.assert_close(a[name]["loss"], p[name]["loss"], rtol=0, atol=0)
            torch.testing.assert_close(a[name]["grad_x"], 2 * p[name]["grad_x"], rtol=1e-12, atol=0)


def test_row_sparse_sgd_applies_the_agent_gradient():
    loss_fn = build("c_triplet", dict(margin=0.3))
    x, labels = global_batch()
    before = loss_fn.weight.detach().clone()
    loss_fn(x.float(), labels).backward()
    grad = loss_fn.weight.grad.to_dense()
    RowSparseSGD([loss_fn.weight], lr=0.1).step()
    torch.testing.assert_close(loss_fn.weight.detach(), before - 0.1 * grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make, match", [
    (lambda: TripletLoss(mining="hardest"), "mining"),
    (lambda: TripletLoss(semihard_fallback="random"), "semihard_fallback"),
    (lambda: TripletLoss(margin=-1.0), "margin"),
    (lambda: ContrastiveLoss(margin=0), "margin"),
    (lambda: CTripletLoss(7, 4, chunk_size=0), "chunk_size"),
])
def test_bad_configuration_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="differ in length"):
        TripletLoss()(torch.randn(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        ContrastiveLoss()(torch.randn(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match=r"\(b, 4\)"):
        CContrastiveLoss(7, 4)(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))


def test_agent_loss_rejects_a_label_outside_the_classes():
    from partial_fc.losses import CContrastiveLoss

    loss = CContrastiveLoss(10, 4)
    with pytest.raises(ValueError, match=r"label 10 is outside \[0, 10\)"):
        loss(torch.randn(2, 4), torch.tensor([0, 10]))
