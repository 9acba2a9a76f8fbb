"""FaceNet's triplet loss with online mining over the global batch (all ranks together)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import make_collectives
from partial_fc.losses.common import check_batch, check_margin, global_batch, mean_over_ranks
from partial_fc.losses.mining import FALLBACKS, STRATEGIES, mine_triplets


def squared_distances(anchors: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(b, B) squared Euclidean distances of unit vectors: 2 - 2 cos, clamped at 0."""
    return (2.0 - 2.0 * anchors @ x.t()).clamp_min(0.0)


class TripletLoss(nn.Module):
    """Triplet loss of Schroff et al. (FaceNet, CVPR 2015) on L2-normalised embeddings.

    loss(a, p, n) = max(0, d(a, p) - d(a, n) + margin), d the squared Euclidean distance.

    Args:
        margin: alpha; FaceNet's 0.2.
        mining: ``semihard`` (FaceNet; one triplet per anchor-positive pair, averaged over
            those pairs), ``batch_hard`` (Hermans et al. 2017; one triplet per anchor, averaged
            over anchors with a positive and a negative), ``batch_all`` (every valid triplet,
            averaged over the triplets with a positive loss; 0 when there are none).
            The rules are spelled out in docs/losses.md.
        semihard_fallback: negative for a pair with no negative farther than its positive:
            ``hardest`` (closest negative) or ``easiest`` (farthest: TF-Addons'
            ``triplet_semihard_loss``).
        group: process group of the data-parallel ranks (None: the default one, or a single process).
        backbone_grad_average: the backbone averages gradients over N ranks (DDP); the
            all-gather's backward then multiplies the embedding gradient by N, once.

    forward(embeddings (b, D), labels (b,)) -> scalar, the same on every rank.

    Each rank mines and computes the terms of its own b anchors against the whole global batch
    B = N b (positives and negatives come from every rank); the sum and the count of terms are
    all-reduced (2 floats) and divided, so every rank returns the same value. In backward each
    rank differentiates only its own terms; the all-gather's reduce-scatter adds the ranks'
    partial gradients, which is the exact gradient of the global loss. Collectives: all-gather
    B x D and B, all-reduce 2; backward reduce-scatter B x D.
    """

    def __init__(self, *, margin: float = 0.2, mining: str = "semihard", semihard_fallback: str = "hardest",
                 group: Any = None, backbone_grad_average: bool = True) -> None:
        super().__init__()
        if mining not in STRATEGIES:
            raise ValueError(f"unknown mining {mining!r}; choose from {list(STRATEGIES)}")
        if semihard_fallback not in FALLBACKS:
            raise ValueError(f"unknown semihard_fallback {semihard_fallback!r}; choose from {list(FALLBACKS)}")
        self.margin = check_margin("margin", margin)
        self.mining, self.semihard_fallback = mining, semihard_fallback
        self.comm = make_collectives(group)
        self.backbone_grad_average = backbone_grad_average

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels)
        x, y = global_batch(embeddings, labels, self.comm, backbone_grad_average=self.backbone_grad_average)
        b = embeddings.shape[0]
        anchor_ids = torch.arange(self.comm.rank * b, (self.comm.rank + 1) * b, device=x.device)
        dist = squared_distances(x[anchor_ids], x)
        triplets = mine_triplets(dist.detach(), y, anchor_ids, strategy=self.mining, margin=self.margin,
                                 fallback=self.semihard_fallback)
        rows = triplets[:, 0] - self.comm.rank * b
        terms = (self.margin + dist[rows, triplets[:, 1]] - dist[rows, triplets[:, 2]]).clamp_min(0.0)
        count = (terms > 0).sum() if self.mining == "batch_all" else torch.tensor(terms.shape[0], device=x.device)
        return mean_over_ranks(terms.sum(), count, self.comm)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining}, world_size={self.comm.world_size}"
