"""The PartialFC head: class centers sharded over the ranks of a process group, partial-FC
sampling, margin on owned positives, global softmax normaliser from all-reduces."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import gather_with_grad, make_collectives
from partial_fc.head import margins as margin_registry
from partial_fc.head.checks import check_batch, check_global
from partial_fc.head.init import init_class_rows
from partial_fc.head.margins.base import Margin, overrides
from partial_fc.head.ranges import class_range
from partial_fc.head.sampling import sample_classes
from partial_fc.head.sharded_ce import sharded_margin_ce
from partial_fc.head.workspace import Workspace

DEFAULT_CHUNK_SIZE = 65536


class PartialFC(nn.Module):
    """Model-parallel margin-softmax classification head.

    Args:
        num_classes: C, the number of classes of the whole head (all ranks together).
        embedding_dim: D.
        margin: a ``Margin`` or the name of one (``partial_fc.margins.names()``), built with its
            paper defaults.
        sample_rate: fraction of negative classes kept each step, in (0, 1]; every positive of
            the global batch is always kept.
        group: the torch.distributed process group that shards the classes; None uses the
            default group when one is initialised, else runs as a single process.
        seed: fixes the initial class centers (row c from (seed, c) alone) and the sampling
            (class c at step t from (seed, t, c) alone), at any world size.
        chunk_size: classes per logit tile; at most B x chunk_size logits exist at once.
        init_std: standard deviation of the initial class-center entries.
        backbone_grad_average: the backbone is data-parallel with gradient *averaging* (DDP,
            DeepSpeed). The loss is the mean over the global batch, so the exact gradient w.r.t.
            a rank's embeddings is the sum of every rank's partial gradient; averaging would
            divide it by N. With this set, the embedding gradient is multiplied by N in the
            all-gather's backward so that after the average the backbone gradient is exact.
            This is the only place in the project where that scale is applied.
        check_inputs: verify labels in [0, C) and equal local batch sizes on every rank
            (one all-reduce of 5 integers and one host sync per step).
        check_finite: also reject non-finite embeddings (part of the same check).

    forward(embeddings (b, D) float, labels (b,) int) -> the mean loss over the global batch
    of world_size x b samples (plus the margin's regulariser, if any), the same value on every
    rank. Collectives per step: one small all-reduce for the checks, all-gather of embeddings
    (B x D) and labels (B), all-reduce MAX (B), all-reduce SUM (2B), and one all-reduce SUM (B)
    for margins that need every sample's target cosine (CurricularFace); backward:
    reduce-scatter of the embedding gradient (B x D).

    With a sub-center margin (``margin.subcenters`` = K > 1) ``weight`` holds K rows per class,
    class c's at local rows [(c - start) K, (c - start + 1) K), row r of the whole head
    initialised from (seed, r); ``class_range`` stays in class ids. Margin buffers (running
    statistics) are part of the head's state dict.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, *, margin: Margin | str, sample_rate: float = 1.0,
        group: Any = None, seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE, init_std: float = 0.01,
        backbone_grad_average: bool = True, check_inputs: bool = True, check_finite: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise ValueError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.margin = margin_registry.build(margin) if isinstance(margin, str) else margin
        if not isinstance(self.margin, Margin):
            raise ValueError(f"margin must be a Margin or one of {margin_registry.names()}, got {margin!r}")
        self.comm = make_collectives(group)
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.sample_rate, self.seed, self.chunk_size = float(sample_rate), seed, chunk_size
        self.backbone_grad_average = backbone_grad_average
        self.check_inputs, self.check_finite = check_inputs, check_finite
        self.class_range = class_range(num_classes, self.comm.world_size, self.comm.rank)
        start, stop = self.class_range
        k = self.margin.subcenters
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"margin.subcenters must be an integer >= 1, got {k!r}")
        self.weight = nn.Parameter(init_class_rows(seed, start * k, stop * k, embedding_dim, std=init_std, device=device))
        if device is not None:
            self.margin.to(device)
        self.workspace = Workspace()
        #: Training steps taken: drives sampling and margin schedules; saved in the state dict.
        self.step = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, embedding_dim=self.embedding_dim)
        if embeddings.device != self.weight.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the head's shard is on {self.weight.device}")
        if self.check_inputs:
            check_global(embeddings, labels, self.comm, num_classes=self.num_classes, check_finite=self.check_finite)
        comm = self.comm
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            grad_scale = float(comm.world_size) if self.backbone_grad_average else 1.0
            x = gather_with_grad(embeddings.to(self.weight.dtype), comm, grad_scale=grad_scale)
            y = comm.all_gather(labels.to(torch.int64))
            start, stop = self.class_range
            rate = self.sample_rate if self.training else 1.0
            sampled = sample_classes(y, start=start, stop=stop, seed=self.seed, step=self.step, sample_rate=rate)
            loss = sharded_margin_ce(
                x, self.margin.scale_features(x), self.weight,
                rows=None if rate >= 1.0 else sampled.rows, target_pos=sampled.target_pos,
                margin=self.margin, step=self.step, comm=comm, chunk_size=self.chunk_size,
                workspace=self.workspace, training=self.training,
            )
            if overrides(self.margin, "regularizer"):
                loss = loss + self.margin.regularizer(self._own_rows_with_grad(x, embeddings.shape[0]))
        if self.training:
            self.step += 1
        return loss

    def _own_rows_with_grad(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """x with gradient only through this rank's rows: a term every rank computes on the global
        batch then gets its exact gradient from the all-gather's backward (a sum over ranks)."""
        if self.comm.world_size == 1:
            return x
        lo, hi = self.comm.rank * b, (self.comm.rank + 1) * b
        return torch.cat([x[:lo].detach(), x[lo:hi], x[hi:].detach()])

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "num_classes": self.num_classes, "class_range": list(self.class_range), "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("num_classes") != self.num_classes or tuple(state.get("class_range", ())) != self.class_range:
            raise ValueError(
                f"checkpoint shard holds classes {state.get('class_range')} of {state.get('num_classes')}, "
                f"this head owns {list(self.class_range)} of {self.num_classes}; reshard the checkpoint first"
            )
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        start, stop = self.class_range
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, classes=[{start}, {stop}), "
                f"sample_rate={self.sample_rate}, chunk_size={self.chunk_size}, world_size={self.comm.world_size}")
