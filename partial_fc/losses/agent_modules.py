"""``CContrastiveLoss`` and ``CTripletLoss``: NormFace's agent losses as modules owning their
shard of the agents (see ``partial_fc.losses.agent`` for the math, the collectives and where
the definitions and default margins come from)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.head.class_weights import DEFAULT_CHUNK_SIZE, ShardedClassWeights
from partial_fc.losses.agent import NEGATIVES, agent_loss
from partial_fc.losses.common import check_margin


class _AgentLoss(ShardedClassWeights):
    """The sharded agents: ``ShardedClassWeights`` whose rows start on the unit sphere (row c
    drawn from (seed, c) and scaled to unit length; ``init_std`` only sets the distribution it
    is drawn from)."""

    row_noun = "agents"
    owner = "this loss"
    kind = ""
    default_margin = 1.0
    negatives = "all"

    def __init__(self, num_classes: int, embedding_dim: int, *, margin: float | None = None,
                 negatives: str | None = None, group: Any = None, seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 init_std: float = 0.01, backbone_grad_average: bool = True,
                 device: torch.device | str | None = None) -> None:
        allowed = NEGATIVES if self.kind == "triplet" else ("all",)
        if negatives is not None and negatives not in allowed:
            raise ValueError(f"{type(self).__name__} negatives must be one of {list(allowed)}, got {negatives!r}")
        super().__init__(num_classes, embedding_dim, group=group, seed=seed, chunk_size=chunk_size, init_std=init_std,
                         backbone_grad_average=backbone_grad_average, device=device)
        self.negatives = self.negatives if negatives is None else negatives
        self.margin = check_margin("margin", self.default_margin if margin is None else margin)

    def _initial_rows(self, rows: torch.Tensor) -> torch.Tensor:
        # on the unit sphere, as the authors' prototxts initialise the agents: the loss only sees
        # W / |W|, but the gradient through that normalisation scales with 1 / |W|
        return nn.functional.normalize(rows, dim=1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs_(embeddings, labels)  # a bad label is an error, not a lost term
        x_hat, y = self.gather_batch(nn.functional.normalize(embeddings.to(self.weight.dtype), dim=1), labels)
        return agent_loss(x_hat, self.weight, y, first_class=self.class_range[0], kind=self.kind,
                          margin=self.margin, comm=self.comm, chunk_size=self.chunk_size, negatives=self.negatives)

    def extra_repr(self) -> str:
        start, stop = self.class_range
        return (f"num_classes={self.num_classes}, classes=[{start}, {stop}), margin={self.margin}, "
                f"negatives={self.negatives}")


class CContrastiveLoss(_AgentLoss):
    """NormFace C-contrastive: pull x~ to its agent (d linear, no hinge), push it beyond d = m
    from every other agent (hinge, summed), d the squared distance; m = 1.0 as in the authors'
    ``normalized_Euclidean_contrastive.prototxt`` (negative_margin: 1).

    forward(embeddings (b, D), labels (b,) global class ids) -> mean over the global batch,
    the same on every rank. The agents' gradient is row-sparse (``RowSparseSGD`` applies it).
    ``backbone_grad_average`` as in ``PartialFC``: x N once, in the all-gather's backward.
    """

    kind = "contrastive"
    default_margin = 1.0


class CTripletLoss(_AgentLoss):
    """NormFace C-triplet: the other agents at least m farther (squared distance) than the own.

    ``negatives="all"`` (default): the hinges of every other agent are summed; ``"hardest"``:
    only the nearest other agent's hinge counts, as the authors' fine-tuning configuration
    ``normalized_Euclidean_triplet.prototxt`` (hardest_only: true; margin 0.8, the default m).
    Trained from scratch, "hardest" stayed at chance on the demo data while "all" learned (figures
    in docs/losses.md), hence the default. Same interface as ``CContrastiveLoss``; collectives
    in ``partial_fc.losses.agent``.
    """

    kind = "triplet"
    default_margin = 0.8
    negatives = "all"
