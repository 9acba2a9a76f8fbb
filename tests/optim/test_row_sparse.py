"""Invariant 5 (optimizer): row-sparse SGD/AdamW touch only sampled rows and equal the dense
torch optimizers when every row is sampled."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC
from partial_fc.optim import RowSparseAdamW, RowSparseSGD


def sparse_grad(rows: list[int], values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape, check_invariants=True)


def run(opt_cls, kwargs, grads, dense_cls=None, *, block_rows=3):
    """Apply a sequence of gradients with our optimizer (and the dense one on dense grads)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, 4, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    ours = opt_cls([p], block_rows=block_rows, **kwargs)
    dense = dense_cls([q], **kwargs) if dense_cls else None
    for g in grads:
        p.grad = g
        ours.step()
        if dense:
            q.grad = g.to_dense() if g.is_sparse else g
            dense.step()
    return p.detach(), q.detach(), ours


SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
ADAM_KW = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
CASES = [(RowSparseSGD, SGD_KW, torch.optim.SGD), (RowSparseSGD, dict(SGD_KW, nesterov=True), torch.optim.SGD),
         (RowSparseAdamW, ADAM_KW, torch.optim.AdamW)]


@pytest.mark.parametrize("opt_cls,kwargs,dense_cls", CASES)
@pytest.mark.parametrize("sparse", [False, True])
def test_every_row_sampled_equals_the_dense_torch_optimizer(opt_cls, kwargs, dense_cls, sparse):
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(7, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    if sparse:  # all rows present, in shuffled order and split across two duplicate entries
        grads = [sparse_grad([3, 1, 0, 6, 5, 4, 2, 3], torch.cat([t[[3, 1, 0, 6, 5, 4, 2]] / 1, t[[3]] * 0]), (7, 4)) for t in grads]
    ours, dense, _ = run(opt_cls, kwargs, grads, dense_cls)
    # fp64, identical formulas evaluated in a slightly different order
    torch.testing.assert_close(ours, dense, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt_cls,kwargs,dense_cls", CASES)
def test_unsampled_rows_and_their_state_are_untouched(opt_cls, kwargs, dense_cls):
    g = torch.Generator().manual_seed(2)
    grads = [sparse_grad([0, 5], torch.randn(2, 4, generator=g, dtype=torch.float64), (7, 4)),
             sparse_grad([5, 2], torch.randn(2, 4, generator=g, dtype=torch.float64), (7, 4))]
    torch.manual_seed(0)
    initial = torch.randn(7, 4, dtype=torch.float64)
    p, _, opt = run(opt_cls, kwargs, grads)
    untouched = [1, 3, 4, 6]
    assert torch.equal(p[untouched], initial[untouched])
    for value in opt.state[next(iter(opt.state))].values():
        assert torch.count_nonzero(value[untouched]) == 0


@pytest.mark.parametrize("opt_cls,kwargs,dense_cls", CASES)
def test_lazy_rows_follow_their_own_history(opt_cls, kwargs, dense_cls):
    """Row 5 sampled at steps 1 and 3 gets exactly the dense update of a 2-step history."""
    g = torch.Generator().manual_seed(3)
    g1, g2, g3 = (torch.randn(1, 4, generator=g, dtype=torch.float64) for _ in range(3))
    shape = (7, 4)
    sparse_seq = [sparse_grad([5], g1, shape), sparse_grad([0], g2, shape), sparse_grad([5], g3, shape)]
    ours, _, _ = run(opt_cls, kwargs, sparse_seq)
    torch.manual_seed(0)
    row = torch.nn.Parameter(torch.randn(7, 4, dtype=torch.float64)[5:6].clone())
    dense = dense_cls([row], **kwargs)
    for grad in (g1, g3):
        row.grad = grad
        dense.step()
    torch.testing.assert_close(ours[5:6], row.detach(), rtol=1e-12, atol=1e-14)


def test_head_step_changes_only_sampled_rows():
    head = PartialFC(2000, 8, margin="arcface", sample_rate=0.05)
    before = head.weight.detach().clone()
    opt = RowSparseSGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    labels = torch.tensor([3, 1500, 1999, 3])
    head(torch.randn(4, 8), labels).backward()
    touched = head.weight.grad.coalesce().indices()[0]
    opt.step()
    changed = (head.weight.detach() != before).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) == set(touched.tolist())
    assert {3, 1500, 1999} <= set(touched.tolist()) and len(touched) < 200


@pytest.mark.parametrize("kwargs,match", [({"lr": -1}, "lr must be"), ({"lr": 0.1, "momentum": 1.0}, "momentum must be"),
                                          ({"lr": 0.1, "nesterov": True}, "nesterov needs momentum")])
def test_sgd_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RowSparseSGD([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
