"""Persistent bytes per class-center row of each storage mode, from the formats' own tensors
(the planner and the docs ask this, so they cannot drift from what the optimizers allocate)."""

from __future__ import annotations

import torch

from partial_fc.optim.quantized import WEIGHT_STORAGE
from partial_fc.optim.row_sparse import RowSparseAdamW, RowSparseSGD

OPTIMIZERS = ("sgd", "adamw")


def bytes_per_row(*, dim: int, optim: str = "sgd", weight_dtype: str = "fp32", state_dtype: str = "fp32",
                  momentum: bool = True) -> int:
    """Weight plus optimizer state of one row of width ``dim`` (SGD without momentum keeps none)."""
    if optim not in OPTIMIZERS:
        raise ValueError(f"optim must be one of {list(OPTIMIZERS)}, got {optim!r}")
    if weight_dtype not in WEIGHT_STORAGE:
        raise ValueError(f"weight_dtype must be one of {list(WEIGHT_STORAGE)}, got {weight_dtype!r}")
    p = torch.nn.Parameter(torch.empty(1, dim, dtype=WEIGHT_STORAGE[weight_dtype], device="meta"))
    if optim == "sgd":
        opt = RowSparseSGD([p], lr=0.1, momentum=0.9 if momentum else 0.0, state_dtype=state_dtype)
        state = opt._create_state(p) if momentum else {}
    else:
        state = RowSparseAdamW([p], lr=1e-3, state_dtype=state_dtype)._create_state(p)
    return p.element_size() * dim + sum(t.numel() * t.element_size() for t in state.values())
