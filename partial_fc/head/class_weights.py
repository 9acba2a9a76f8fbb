"""``ShardedClassWeights``: a matrix of class rows sharded over the ranks of a process group.

The partial-FC head and NormFace's agent losses are both one of these; the trainer, the head
optimizer and the checkpoints know a criterion with class weights by this type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from partial_fc.comm import gather_with_grad, make_collectives
from partial_fc.head.checks import check_batch, check_global
from partial_fc.head.offload import RowTable, check_offload
from partial_fc.head.ranges import class_range
from partial_fc.head.row_init import BLOCK_ROWS, init_class_rows
from partial_fc.head.storage import WEIGHT_STORAGE

# one tile up to 786,432 sampled rows per rank (tiles past the first are recomputed in the
# backward): C = 15M at D 512, b 128, r 0.1 on 2 ranks; a fused CPU tile costs B x 4 bytes per row
DEFAULT_CHUNK_SIZE = 786432


def check_state_dtype(state_dtype: str) -> None:
    """``state_dtype``: the storage of the class rows (``head.state_dtype``, the planner's name)."""
    if state_dtype not in WEIGHT_STORAGE:
        raise ValueError(f"state_dtype must be one of {list(WEIGHT_STORAGE)}, got {state_dtype!r}")


class ShardedClassWeights(nn.Module):
    """This rank's rows of a (C x rows_per_class, D) class-weight matrix.

    Attributes: ``weight`` (rows of classes ``class_range``, row-sparse gradient; row r of the
    whole matrix is initialised from (seed, r) alone, so at any world size), ``class_range``
    (class ids, from ``head.ranges.class_range``), ``num_classes``, ``embedding_dim``, ``seed``,
    ``chunk_size``, ``state_dtype`` (the rows' storage: fp32, bf16 or fp16; the arithmetic of a
    step is fp32 either way), ``backbone_grad_average`` and ``comm`` (the collectives of ``group``; None:
    the default group when one is initialised, else a single process).

    ``offload`` host or mmap (``head.offload``): ``weight`` and its optimizer state live in a
    ``RowTable`` off the compute device ``device`` (``weight.row_table``; ``weight`` is then a
    CPU tensor), and a step computes on its sampled rows brought to ``device`` (see
    ``head.offload``); ``offload_dir`` holds mmap's files.

    The extra state {num_classes, class_range, seed} (plus a subclass's ``_own_extra_state``)
    makes a load of another shard an error that names both ranges.
    """

    #: what the rows are called in errors: "classes" of a head, "agents" of a loss
    row_noun = "classes"
    owner = "this head"

    def __init__(self, num_classes: int, embedding_dim: int, *, rows_per_class: int = 1, group: Any = None,
                 seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE, init_std: float = 0.01,
                 backbone_grad_average: bool = True, state_dtype: str = "fp32",
                 device: torch.device | str | None = None, offload: str = "none",
                 offload_dir: str | None = None) -> None:
        super().__init__()
        check_state_dtype(state_dtype)
        check_offload(offload)
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise ValueError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        if not (isinstance(rows_per_class, int) and rows_per_class >= 1):
            raise ValueError(f"rows_per_class must be an integer >= 1, got {rows_per_class!r}")
        self.comm = make_collectives(group)
        self.num_classes, self.embedding_dim, self.chunk_size, self.seed = num_classes, embedding_dim, chunk_size, seed
        self.backbone_grad_average, self.state_dtype = backbone_grad_average, state_dtype
        self.class_range = class_range(num_classes, self.comm.world_size, self.comm.rank)
        start, stop = self.class_range
        self.offload = offload
        self.compute_device = torch.device(device) if device is not None else torch.device("cpu")
        table = None
        if offload != "none":
            table = RowTable(offload, device=self.compute_device, directory=offload_dir,
                             label=f"rank {self.comm.rank}")
        self.weight = nn.Parameter(self._stored_rows(start * rows_per_class, stop * rows_per_class, init_std,
                                                     device, table))
        if table is not None:
            self.weight.row_table = table  # the optimizer allocates the rows' state there too

    def _stored_rows(self, lo: int, hi: int, init_std: float, device: torch.device | str | None,
                     table: RowTable | None = None) -> torch.Tensor:
        """Rows [lo, hi) in the storage dtype, one init block at a time: a narrow shard never
        exists in fp32 as a whole. Each block is drawn and started in fp32 and rounded to
        nearest once (the initial values carry no accumulated updates that stochastic rounding
        would protect); an fp32 shard holds exactly the values of one fp32 draw."""
        shape, dtype = (hi - lo, self.embedding_dim), WEIGHT_STORAGE[self.state_dtype]
        out = torch.empty(shape, dtype=dtype, device=device) if table is None else table.empty(shape, dtype)
        cut = lo
        while cut < hi:
            end = min(hi, (cut // BLOCK_ROWS + 1) * BLOCK_ROWS)  # the init blocks' own boundaries
            block = init_class_rows(self.seed, cut, end, self.embedding_dim, std=init_std, device=device)
            out[cut - lo:end - lo] = self._initial_rows(block).to(out.device)
            cut = end
        return out

    def _initial_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows drawn from N(0, init_std^2), as the subclass starts them."""
        return rows

    def check_inputs_(self, embeddings: torch.Tensor, labels: torch.Tensor, *, across_ranks: bool = True,
                      check_finite: bool = True) -> None:
        """Shapes, dtypes and device here; with ``across_ranks`` also equal local batch sizes,
        labels in [0, C) and (``check_finite``) finite embeddings on every rank (one all-reduce
        of 5 integers and one host sync), so every rank raises the same error."""
        check_batch(embeddings, labels, embedding_dim=self.embedding_dim)
        home = self.weight.device if self.offload == "none" else self.compute_device
        if embeddings.device != home:
            raise ValueError(f"embeddings are on {embeddings.device} but the shard of {self.row_noun} is on {home}")
        if across_ranks:
            check_global(embeddings, labels, self.comm, num_classes=self.num_classes, check_finite=check_finite)

    def gather_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) embeddings and (B,) int64 labels of the global batch (all ranks' b rows in rank order).

        The gather's backward is a reduce-scatter: each rank gets the sum of every rank's
        gradient for its rows. With ``backbone_grad_average`` it is also multiplied by N,
        compensating the N-fold average of a data-parallel backbone (DDP, DeepSpeed): the loss
        is the mean over the global batch, so the exact gradient of a rank's embeddings is that
        sum, which averaging would divide by N. This is the one place that scale is applied.
        """
        scale = float(self.comm.world_size) if self.backbone_grad_average else 1.0
        return gather_with_grad(embeddings, self.comm, grad_scale=scale), self.comm.all_gather(labels.to(torch.int64))

    def _own_extra_state(self) -> dict[str, Any]:
        return {}

    def get_extra_state(self) -> dict[str, Any]:
        return {**self._own_extra_state(), "num_classes": self.num_classes, "class_range": list(self.class_range),
                "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("num_classes") != self.num_classes or tuple(state.get("class_range", ())) != self.class_range:
            raise ValueError(
                f"checkpoint shard holds {self.row_noun} {_span(state.get('class_range'))} of {state.get('num_classes')}, "
                f"{self.owner} owns {_span(self.class_range)} of {self.num_classes}; reshard the checkpoint first"
            )


def _span(r: Any) -> str:
    return f"[{r[0]}, {r[1]})" if isinstance(r, (list, tuple)) and len(r) == 2 else repr(r)
