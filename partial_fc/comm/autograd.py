"""All-gather whose backward is a reduce-scatter: the one place where the data-parallel
gradient scale of the embeddings is set."""

from __future__ import annotations

import torch

from partial_fc.comm.collectives import Collectives


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Collectives, grad_scale: float) -> torch.Tensor:
        ctx.comm, ctx.grad_scale = comm, grad_scale
        return comm.all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = ctx.comm.reduce_scatter(grad)
        if ctx.grad_scale != 1.0:
            grad = grad * ctx.grad_scale
        return grad, None, None


def gather_with_grad(x: torch.Tensor, comm: Collectives, *, grad_scale: float = 1.0) -> torch.Tensor:
    """Concatenate every rank's ``x`` (b, D) into (world_size * b, D), differentiably.

    Every rank back-propagates the same global loss through its own part of the model, so the
    gradient w.r.t. one rank's embeddings is the sum of all ranks' partial gradients: backward
    is a reduce-scatter (sum), then multiplied by ``grad_scale``. Collectives: one all-gather
    forward, one reduce-scatter backward.
    """
    if comm.world_size == 1:
        return x if grad_scale == 1.0 else _Scale.apply(x, grad_scale)
    return _GatherWithGrad.apply(x, comm, grad_scale)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None
