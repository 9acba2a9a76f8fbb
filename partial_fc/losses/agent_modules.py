"""``CContrastiveLoss`` and ``CTripletLoss``: NormFace's agent losses as modules owning their
shard of the agents (see ``partial_fc.losses.agent`` for the math, the collectives and where
the definitions and default margins come from)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import make_collectives
from partial_fc.head.init import init_class_rows
from partial_fc.head.ranges import class_range
from partial_fc.losses.agent import NEGATIVES, agent_loss
from partial_fc.losses.common import check_batch, check_global, check_margin, global_batch

DEFAULT_CHUNK_SIZE = 65536


class _AgentLoss(nn.Module):
    """The sharded agents and what the trainer and the checkpoints read: ``weight`` (this rank's
    rows, row c initialised from (seed, c) and scaled to unit length; ``init_std`` only sets the
    distribution it is drawn from), ``class_range``, ``num_classes``, ``embedding_dim``,
    ``seed``; the extra state {num_classes, class_range, seed} guards a load against another
    shard, like ``PartialFC``'s."""

    kind = ""
    default_margin = 1.0
    negatives = "all"

    def __init__(self, num_classes: int, embedding_dim: int, *, margin: float | None = None,
                 negatives: str | None = None, group: Any = None, seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 init_std: float = 0.01, backbone_grad_average: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        allowed = NEGATIVES if self.kind == "triplet" else ("all",)
        if negatives is not None and negatives not in allowed:
            raise ValueError(f"{type(self).__name__} negatives must be one of {list(allowed)}, got {negatives!r}")
        self.negatives = self.negatives if negatives is None else negatives
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise ValueError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.margin = check_margin("margin", self.default_margin if margin is None else margin)
        self.comm = make_collectives(group)
        self.num_classes, self.embedding_dim, self.chunk_size, self.seed = num_classes, embedding_dim, chunk_size, seed
        self.backbone_grad_average = backbone_grad_average
        self.class_range = class_range(num_classes, self.comm.world_size, self.comm.rank)
        start, stop = self.class_range
        # on the unit sphere, as the authors' prototxts initialise the agents: the loss only sees
        # W / |W|, but the gradient through that normalisation scales with 1 / |W|
        rows = init_class_rows(seed, start, stop, embedding_dim, std=init_std, device=device)
        self.weight = nn.Parameter(nn.functional.normalize(rows, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, embedding_dim=self.embedding_dim)
        # a bad label is an error, not a lost term
        check_global(embeddings, labels, self.comm, num_classes=self.num_classes)
        x_hat, y = global_batch(embeddings.to(self.weight.dtype), labels, self.comm,
                                backbone_grad_average=self.backbone_grad_average)
        return agent_loss(x_hat, self.weight, y, first_class=self.class_range[0], kind=self.kind,
                          margin=self.margin, comm=self.comm, chunk_size=self.chunk_size, negatives=self.negatives)

    def get_extra_state(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "class_range": list(self.class_range), "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("num_classes") != self.num_classes or tuple(state.get("class_range", ())) != self.class_range:
            raise ValueError(
                f"checkpoint shard holds agents {_span(state.get('class_range'))} of {state.get('num_classes')}, "
                f"this loss owns {_span(self.class_range)} of {self.num_classes}; reshard the checkpoint first"
            )

    def extra_repr(self) -> str:
        start, stop = self.class_range
        return (f"num_classes={self.num_classes}, classes=[{start}, {stop}), margin={self.margin}, "
                f"negatives={self.negatives}")


def _span(r: Any) -> str:
    return f"[{r[0]}, {r[1]})" if isinstance(r, (list, tuple)) and len(r) == 2 else repr(r)


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
