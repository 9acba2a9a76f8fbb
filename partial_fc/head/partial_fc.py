"""The PartialFC head: class centers sharded over the ranks of a process group, partial-FC
sampling, margin on owned positives, global softmax normaliser from all-reduces."""

from __future__ import annotations

from typing import Any

import torch

from partial_fc.head import margins as margin_registry
from partial_fc.head.checks import check_sample_rate
from partial_fc.head.class_weights import DEFAULT_CHUNK_SIZE, ShardedClassWeights
from partial_fc.head.margins.base import Margin, overrides
from partial_fc.head.sampling import sample_classes
from partial_fc.head.sharded_ce import class_row_ids, sharded_margin_ce
from partial_fc.head.workspace import Workspace


class PartialFC(ShardedClassWeights):
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
            DeepSpeed): the embedding gradient is multiplied by N in the all-gather's backward
            so that after the average the backbone gradient is exact (why, and the one place
            that applies it: ``ShardedClassWeights.gather_batch``).
        check_inputs: verify labels in [0, C) and equal local batch sizes on every rank
            (one all-reduce of 5 integers and one host sync per step).
        check_finite: also reject non-finite embeddings (part of the same check).
        state_dtype: storage of the class rows (fp32, bf16, fp16).
        offload: none, host or mmap (see ``head.offload``): where the table of class rows and
            their optimizer state lives; ``offload_dir`` holds mmap's files. An offloaded head
            stages its sampled rows on ``device`` each step (``prefetch`` may start that early),
            and the row-sparse optimizer updates and writes back exactly those rows.

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
        state_dtype: str = "fp32", device: torch.device | str | None = None, offload: str = "none",
        offload_dir: str | None = None,
    ) -> None:
        check_sample_rate(sample_rate)
        margin = margin_registry.build(margin) if isinstance(margin, str) else margin
        if not isinstance(margin, Margin):
            raise ValueError(f"margin must be a Margin or one of {margin_registry.names()}, got {margin!r}")
        k = margin.subcenters
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"margin.subcenters must be an integer >= 1, got {k!r}")
        super().__init__(num_classes, embedding_dim, rows_per_class=k, group=group, seed=seed,
                         chunk_size=chunk_size, init_std=init_std, backbone_grad_average=backbone_grad_average,
                         state_dtype=state_dtype, device=device, offload=offload, offload_dir=offload_dir)
        self.margin = margin.to(device) if device is not None else margin
        self.sample_rate = float(sample_rate)
        self.check_inputs, self.check_finite = check_inputs, check_finite
        self.workspace = Workspace()
        #: Training steps taken: drives sampling and margin schedules; saved in the state dict.
        self.step = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_inputs_(embeddings, labels, across_ranks=self.check_inputs, check_finite=self.check_finite)
        comm = self.comm
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x, y = self.gather_batch(embeddings.to(torch.promote_types(self.weight.dtype, torch.float32)), labels)
            start, stop = self.class_range
            rate = self.sample_rate if self.training else 1.0
            sampled = sample_classes(y, start=start, stop=stop, seed=self.seed, step=self.step, sample_rate=rate)
            weight, rows = self.weight, None if rate >= 1.0 else sampled.rows
            if self.offload != "none":  # this step's rows on the device; the shard's ids are only the table's
                ids = class_row_ids(sampled.rows, self.margin.subcenters)
                weight, rows = self.weight.row_table.take(self.weight, ids, (self.step, self.training)).rows, None
            loss = sharded_margin_ce(
                x, self.margin.scale_features(x), weight,
                rows=rows, target_pos=sampled.target_pos,
                margin=self.margin, step=self.step, comm=comm, chunk_size=self.chunk_size,
                workspace=self.workspace, training=self.training,
            )
            if overrides(self.margin, "regularizer"):
                loss = loss + self.margin.regularizer(self._own_rows_with_grad(x, embeddings.shape[0]))
        if self.training:
            self.step += 1
        return loss

    def prefetch(self, labels: torch.Tensor) -> None:
        """Offloaded tables: start bringing the rows that the next ``forward`` with these local
        ``labels`` will sample to the device (one all-gather of the labels now; ``forward``
        waits for the rows). Call it before the backbone's forward, on every rank; a no-op for
        a table in device memory or outside training."""
        if self.offload == "none" or not self.training:
            return
        start, stop = self.class_range
        y = self.comm.all_gather(labels.to(device=self.compute_device, dtype=torch.int64))
        sampled = sample_classes(y, start=start, stop=stop, seed=self.seed, step=self.step, sample_rate=self.sample_rate)
        self.weight.row_table.prefetch(self.weight, class_row_ids(sampled.rows, self.margin.subcenters),
                                       (self.step, self.training))

    def _own_rows_with_grad(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """x with gradient only through this rank's rows: a term every rank computes on the global
        batch then gets its exact gradient from the all-gather's backward (a sum over ranks)."""
        if self.comm.world_size == 1:
            return x
        lo, hi = self.comm.rank * b, (self.comm.rank + 1) * b
        return torch.cat([x[:lo].detach(), x[lo:hi], x[hi:].detach()])

    def _own_extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        start, stop = self.class_range
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, classes=[{start}, {stop}), "
                f"sample_rate={self.sample_rate}, chunk_size={self.chunk_size}, world_size={self.comm.world_size}")
