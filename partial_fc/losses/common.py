"""Pieces shared by the pair, triplet and agent losses: input checks, the global batch, and
a sum over ranks whose backward lets each rank keep the gradient of its own part."""

from __future__ import annotations

import torch

from partial_fc.comm import Collectives, gather_with_grad
from partial_fc.head.checks import check_batch, check_global  # noqa: F401  (re-exported for the losses)


def check_margin(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def global_batch(embeddings: torch.Tensor, labels: torch.Tensor, comm: Collectives, *, backbone_grad_average: bool,
                 normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) embeddings (L2-normalised if ``normalize``) and (B,) labels of the global batch.

    The gather's backward is a reduce-scatter (sum of every rank's partial gradient); with
    ``backbone_grad_average`` it also multiplies by N, compensating the N-fold average of a
    data-parallel backbone (DDP, DeepSpeed) — the one place these losses apply that scale.
    """
    x = torch.nn.functional.normalize(embeddings, dim=1) if normalize else embeddings
    scale = float(comm.world_size) if backbone_grad_average else 1.0
    return gather_with_grad(x, comm, grad_scale=scale), comm.all_gather(labels.to(torch.int64))


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum of ``t`` over ranks (identical on every rank). Backward: the identity,
    so each rank back-propagates only through the part it computed; the all-gather's
    reduce-scatter then adds the parts up, which gives the exact gradient once."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, comm: Collectives) -> torch.Tensor:
        return comm.all_reduce_(t.clone(), "sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_ranks(t: torch.Tensor, comm: Collectives) -> torch.Tensor:
    return t if comm.world_size == 1 else _SumOverRanks.apply(t, comm)


def mean_over_ranks(total: torch.Tensor, count: torch.Tensor, comm: Collectives) -> torch.Tensor:
    """``sum(total) / max(sum(count), 1)`` over ranks with one all-reduce of 2 values;
    ``count`` carries no gradient. Identical on every rank."""
    stats = sum_over_ranks(torch.stack([total, count.detach().to(total.dtype)]), comm)
    return stats[0] / stats[1].clamp_min(1.0)
