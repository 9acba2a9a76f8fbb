"""The baseline the head is measured against: the way the field's reference implementation
(InsightFace arcface_torch, PartialFC_V2) computes a sharded margin softmax. The sampled class
rows are indexed with autograd, the whole B x S logit matrix is materialised and normalised
with ordinary tensor ops, the softmax normaliser is built from all-reduces, and a dense
torch.optim.SGD updates the whole shard every step. Same sampling and same loss as PartialFC,
so the two can be compared step for step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from partial_fc.comm import gather_with_grad, make_collectives
from partial_fc.head.row_init import init_class_rows
from partial_fc.head.margins.base import ScaledCosineMargin
from partial_fc.head.ranges import class_range
from partial_fc.head.sampling import sample_classes


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; every rank holds the same loss, so the backward is the identity."""

    @staticmethod
    def forward(ctx, x, comm):
        return comm.all_reduce_(x.clone(), "sum")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class NaivePartialFC(nn.Module):
    def __init__(self, num_classes: int, embedding_dim: int, *, margin: ScaledCosineMargin, sample_rate: float,
                 seed: int = 0, init_std: float = 0.01, group=None, device=None) -> None:
        super().__init__()
        if not isinstance(margin, ScaledCosineMargin):
            raise ValueError(f"the naive baseline supports the scaled-cosine margins only, got {type(margin).__name__}")
        self.margin, self.sample_rate, self.seed = margin, sample_rate, seed
        self.comm = make_collectives(group)
        self.class_range = class_range(num_classes, self.comm.world_size, self.comm.rank)
        start, stop = self.class_range
        self.weight = nn.Parameter(init_class_rows(seed, start, stop, embedding_dim, std=init_std, device=device))
        self.step = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        comm = self.comm
        x = gather_with_grad(embeddings, comm, grad_scale=float(comm.world_size))
        y = comm.all_gather(labels)
        start, stop = self.class_range
        sampled = sample_classes(y, start=start, stop=stop, seed=self.seed, step=self.step, sample_rate=self.sample_rate)
        self.step += 1
        w = self.weight[sampled.rows]
        cos = F.linear(F.normalize(x), F.normalize(w)).clamp(-1, 1)
        owned = (sampled.target_pos >= 0).nonzero().squeeze(1)
        pos = sampled.target_pos[owned]
        target_cos = cos[owned, pos]
        logits = cos * self.margin.scale
        logits = logits.index_put((owned, pos), self.margin.target_logit(target_cos, x_norm=None, w_norm=None, step=0))
        row_max = logits.detach().amax(1)
        comm.all_reduce_(row_max, "max")
        sum_exp = _AllReduceSum.apply(torch.exp(logits - row_max[:, None]).sum(1), comm)
        target = torch.zeros_like(row_max).index_put((owned,), logits[owned, pos])
        target = _AllReduceSum.apply(target, comm)
        return (torch.log(sum_exp) + row_max - target).mean()
