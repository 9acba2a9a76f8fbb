"""Contrastive loss (Hadsell, Chopra & LeCun 2006; DeepID2's verification signal) on all
pairs of the global batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import make_collectives
from partial_fc.losses.common import check_batch, check_margin, global_batch, mean_over_ranks

_EPS = 1e-12  # keeps the gradient of d = sqrt(d^2) finite for coincident negatives


class ContrastiveLoss(nn.Module):
    """Mean over the B (B - 1) / 2 pairs of the global batch of

        same identity:      1/2 d^2
        different identity: 1/2 max(0, margin - d)^2,      d = |x_i - x_j|_2

    (the 1/2 as in Hadsell et al. and DeepID2). With ``normalize`` (default) the embeddings are
    L2-normalised first, so d is in [0, 2]; margin 1.0 as pytorch-metric-learning's default
    ``neg_margin``.

    Each rank computes the rows of its own b samples against all B (ordered pairs i != j;
    every unordered pair appears twice, so the mean is the same), all-reduces sum and count
    (2 floats), and back-propagates its own rows only; the all-gather's reduce-scatter sums
    the partial gradients. ``backbone_grad_average`` as in ``TripletLoss``/``PartialFC``.
    Collectives: all-gather B x D and B, all-reduce 2; backward reduce-scatter B x D.
    """

    def __init__(self, *, margin: float = 1.0, normalize: bool = True, group: Any = None,
                 backbone_grad_average: bool = True) -> None:
        super().__init__()
        self.margin = check_margin("margin", margin)
        self.normalize = normalize
        self.comm = make_collectives(group)
        self.backbone_grad_average = backbone_grad_average

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels)
        x, y = global_batch(embeddings, labels, self.comm, backbone_grad_average=self.backbone_grad_average,
                            normalize=self.normalize)
        b, rank = embeddings.shape[0], self.comm.rank
        ids = torch.arange(rank * b, (rank + 1) * b, device=x.device)
        anchors = x[ids]
        d2 = (anchors.square().sum(1)[:, None] + x.square().sum(1)[None, :] - 2.0 * anchors @ x.t()).clamp_min(0.0)
        same = y[ids][:, None] == y[None, :]
        other = ids[:, None] != torch.arange(x.shape[0], device=x.device)[None, :]
        pos = same & other
        push = (self.margin - (d2 + _EPS).sqrt()).clamp_min(0.0).square()
        terms = 0.5 * torch.where(pos, d2, torch.where(same, torch.zeros_like(d2), push))
        count = other.sum()
        return mean_over_ranks(terms.sum(), count, self.comm)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}, world_size={self.comm.world_size}"
