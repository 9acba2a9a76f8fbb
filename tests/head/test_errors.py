"""Invariant 6: bad input is a ValueError naming the value, never a silent loss."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC
from tests.distributed import run_ranks


def head(**kw):
    return PartialFC(10, 4, margin="arcface", **kw)


@pytest.mark.parametrize("labels,match", [
    (torch.tensor([0, 10]), r"label 10 is outside \[0, 10\)"),
    (torch.tensor([-1, 3]), r"label -1 is outside \[0, 10\)"),
    (torch.tensor([0.0, 1.0]), "integer tensor"),
    (torch.tensor([[0, 1]]), r"labels must have shape \(b,\)"),
    (torch.tensor([0, 1, 2]), r"labels \(3\) and embeddings \(2\) differ"),
])
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        head()(torch.randn(2, 4), labels)


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 5), r"shape \(b, 4\), got \(2, 5\)"),
    (torch.randn(4), r"shape \(b, 4\), got \(4,\)"),
    (torch.ones(2, 4, dtype=torch.int64), "floating point"),
    (torch.randn(0, 4), "empty batch"),
])
def test_bad_embeddings(x, match):
    with pytest.raises(ValueError, match=match):
        head()(x, torch.zeros(x.shape[0] if x.dim() else 1, dtype=torch.int64))


def test_non_finite_embeddings_detected_unless_switched_off():
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        head()(x, torch.tensor([0, 1, 2]))
    assert torch.isnan(head(check_finite=False)(x, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize("kwargs,match", [
    ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
    ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\], got 1.5"),
    ({"margin": "arcfce"}, "unknown margin 'arcfce'"),
    ({"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = {"margin": "arcface", **kwargs}
    with pytest.raises(ValueError, match=match):
        PartialFC(10, 4, **args)


def mismatched_batches(rank: int, world_size: int) -> str:
    h = PartialFC(10, 4, margin="cosface")
    b = 3 if rank == 0 else 2
    try:
        h(torch.randn(b, 4), torch.zeros(b, dtype=torch.int64))
    except ValueError as err:
        return str(err)
    return "no error"


def label_out_of_range_on_one_rank(rank: int, world_size: int) -> str:
    h = PartialFC(10, 4, margin="cosface")
    labels = torch.tensor([1, 12]) if rank == 1 else torch.tensor([1, 2])
    try:
        h(torch.randn(2, 4), labels)
    except ValueError as err:
        return str(err)
    return "no error"


def test_every_rank_raises_when_local_batch_sizes_differ():
    messages = run_ranks(mismatched_batches, 2)
    assert all("local batch sizes differ across ranks: between 2 and 3" in m for m in messages), messages


def test_every_rank_raises_for_a_bad_label_on_another_rank():
    messages = run_ranks(label_out_of_range_on_one_rank, 2)
    assert all("label 12 is outside [0, 10)" in m for m in messages), messages
