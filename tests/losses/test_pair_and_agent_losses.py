"""Every loss equals an independent float64 loop oracle at world sizes 1, 2 and 3: the same
value on every rank, the gradient w.r.t. every rank's embeddings and every agent row."""

from __future__ import annotations

import pytest
import torch

from partial_fc.losses import CContrastiveLoss, ContrastiveLoss, CTripletLoss, TripletLoss
from partial_fc.head.row_init import init_class_rows
from partial_fc.head.ranges import class_range
from partial_fc.optim import RowSparseSGD
from tests.distributed import run_ranks
from tests.losses import oracle
from tests.losses.cases import CASES, CHUNK, C, D, B, SEED, global_batch


def near_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The shared batch with every other sample moved next to its own agent (the module's
    initial row), so that its hardest C-triplet hinge is inactive at the default margin."""
    x, labels = global_batch()
    agents = init_class_rows(SEED, 0, C, D).double()[labels[::2]]  # as the module initialises them
    x = x.clone()
    x[::2] = agents / agents.norm(dim=1, keepdim=True) + 0.05 * x[::2] / x[::2].norm(dim=1, keepdim=True)
    return x, labels


# Agents 1 and 5 are equal, all are signed basis vectors: every cosine is a coordinate of x~,
# exact in any summation order, so a sample whose nearest other agent is 1 ties exactly with 5
# (sample 3 of the shared batch). 1 and 5 sit in different tiles and, at 2 and 3 ranks, on
# different ranks: the hardest is the lower id, as in the Caffe loop and the oracle.
TIE_AGENTS = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [-1, 0, 0, 0], [0, 1, 0, 0],
                           [0, 0, -1, 0]], dtype=torch.float64)

# name -> (kind, kwargs, batch, agents or None for the module's own initial rows)
AGENT_CASES = {
    "c_triplet_all": ("c_triplet", dict(margin=0.3, negatives="all"), global_batch, None),
    "c_triplet_all_default_margin": ("c_triplet", dict(), global_batch, None),  # the defaults: all, m = 0.8
    "c_triplet_near": ("c_triplet", dict(negatives="hardest"), near_batch, None),
    "c_triplet_tie": ("c_triplet", dict(margin=0.3, negatives="hardest"), global_batch, TIE_AGENTS),
}
ALL_CASES = {**{name: (kind, kwargs, global_batch, None) for name, (kind, kwargs) in CASES.items()}, **AGENT_CASES}
# On the shared batch every sample's nearest other agent is nearer than its own agent, so each
# hardest hinge is active; c_triplet_near covers the inactive side of the hardest C-triplet.
ALL_ACTIVE = {"c_triplet", "c_triplet_default", "c_triplet_tie"}


def build(kind: str, kwargs: dict, **common):
    if kind == "triplet":
        return TripletLoss(**kwargs, **common)
    if kind == "contrastive":
        return ContrastiveLoss(**kwargs, **common)
    cls = CContrastiveLoss if kind == "c_contrastive" else CTripletLoss
    return cls(C, D, seed=SEED, chunk_size=CHUNK, **kwargs, **common).double()


def loss_results(rank: int, world_size: int, grad_average: bool = False) -> dict:
    b = B // world_size
    out = {}
    for name, (kind, kwargs, batch, agents) in ALL_CASES.items():
        x, labels = batch()
        loss_fn = build(kind, kwargs, backbone_grad_average=grad_average)
        if agents is not None:
            start, stop = loss_fn.class_range
            loss_fn.weight.data.copy_(agents[start:stop])
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
    kind, kwargs, batch, _ = ALL_CASES[name]
    x, labels = batch()
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
    # the paper's settings as released (docs/losses.md): m = 1.0 and 0.8, hardest C-triplet
    margin = kwargs.get("margin", 1.0 if kind == "c_contrastive" else 0.8)
    negatives = kwargs.get("negatives", "all")
    w = weight.clone().requires_grad_()
    loss, active, inactive = oracle.agent_loss(x, w, y, kind.removeprefix("c_"), margin, negatives)
    assert active > 0 and (inactive > 0 or name in ALL_ACTIVE), "test data must exercise both sides of the hinge"
    loss.backward()
    return loss.detach(), x.grad, w.grad


# fp64 both sides. The module gets distances as 2 - 2 cos and sums in another order than the
# loops, and the contrastive loss adds 1e-12 under the square root: differences are ~1e-14.
# 1e-9 is far below any wrong triplet, factor or missing term (>= 1e-3 here).
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("name", list(ALL_CASES))
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


def test_tie_case_has_an_exact_tie_between_agents_on_different_ranks():
    x, labels = global_batch()
    e = x / x.norm(dim=1, keepdim=True)
    d = 2.0 - 2.0 * e @ TIE_AGENTS.t()
    others = d[3].clone()
    others[labels[3]] = float("inf")
    assert others.min() == d[3, 1] == d[3, 5] and labels[3] not in (1, 5)
    assert class_range(C, 2, 0)[1] <= 5 and class_range(C, 3, 0)[1] <= 5  # 1 and 5 on different ranks


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
    loss_fn = build("c_triplet", dict(margin=0.3, negatives="hardest"))
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
    (lambda: CTripletLoss(7, 4, negatives="semihard"), "negatives"),
    (lambda: CContrastiveLoss(7, 4, negatives="hardest"), "negatives"),
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
