"""``CContrastiveLoss`` and ``CTripletLoss``: NormFace's agent losses as modules owning their
shard of the agents (see ``partial_fc.losses.agent`` for the math and the collectives)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import make_collectives
from partial_fc.head.init import init_class_rows
from partial_fc.head.ranges import class_range
from partial_fc.losses.agent import agent_loss
from partial_fc.losses.common import check_batch, check_global, check_margin, global_batch

DEFAULT_CHUNK_SIZE = 65536


class _AgentLoss(nn.Module):
    kind = ""
    default_margin = 1.0

    def __init__(self, num_classes: int, embedding_dim: int, *, margin: float | None = None, group: Any = None,
                 seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE, init_std: float = 0.01,
                 backbone_grad_average: bool = True, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise ValueError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.margin = check_margin("margin", self.default_margin if margin is None else margin)
        self.comm = make_collectives(group)
        self.num_classes, self.embedding_dim, self.chunk_size = num_classes, embedding_dim, chunk_size
        self.backbone_grad_average = backbone_grad_average
        self.class_range = class_range(num_classes, self.comm.world_size, self.comm.rank)
        start, stop = self.class_range
        self.weight = nn.Parameter(init_class_rows(seed, start, stop, embedding_dim, std=init_std, device=device))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, embedding_dim=self.embedding_dim)
        check_global(embeddings, labels, self.comm, num_classes=self.num_classes)  # a bad label is an error, not a lost term
        x_hat, y = global_batch(embeddings.to(self.weight.dtype), labels, self.comm,
                                backbone_grad_average=self.backbone_grad_average)
        return agent_loss(x_hat, self.weight, y, first_class=self.class_range[0], kind=self.kind,
                          margin=self.margin, comm=self.comm, chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        start, stop = self.class_range
        return f"num_classes={self.num_classes}, classes=[{start}, {stop}), margin={self.margin}"


class CContrastiveLoss(_AgentLoss):
    """NormFace C-contrastive: pull x~ to its agent, push it beyond d = m from the others.

    forward(embeddings (b, D), labels (b,) global class ids) -> mean over the global batch,
    the same on every rank. The agents' gradient is row-sparse (``RowSparseSGD`` applies it).
    ``backbone_grad_average`` as in ``PartialFC``: x N once, in the all-gather's backward.
    """

    kind = "contrastive"
    default_margin = 1.0


class CTripletLoss(_AgentLoss):
    """NormFace C-triplet: each other agent at least m farther (squared) than the own one.
    Same interface and collectives as ``CContrastiveLoss`` plus one all-reduce of B."""

    kind = "triplet"
    default_margin = 0.8
