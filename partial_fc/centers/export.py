"""Every class center of a checkpoint as one ``.npy`` matrix, written block by block.

The (C K, D) matrix is streamed into a ``.npy`` (a temporary name beside the output, renamed
when complete: ``util.atomic``), so neither the table nor the output needs to fit in memory:
one block of rows at a time is copied out of the memory-mapped shards and appended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from partial_fc.checkpoint.class_table import ClassTable
from partial_fc.util.atomic import atomic_path

BLOCK_CLASSES = 65536
#: the weight dtypes a .npy keeps as they are; bf16 (no numpy dtype) is widened to float32 exactly
_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_TORCH = {np.dtype(v): k for k, v in _NUMPY.items()}


def output_dtype(weight_dtype: torch.dtype, *, normalize: bool) -> np.dtype:
    """The saved dtype where numpy has it; float32 for bf16, and for unit rows of a 16-bit table
    (normalising in 16 bits would lose the rows' last bits for nothing)."""
    if weight_dtype == torch.float64:
        return np.dtype(np.float64)
    if normalize or weight_dtype not in _NUMPY:
        return np.dtype(np.float32)
    return np.dtype(_NUMPY[weight_dtype])


def export_npy(table: ClassTable, out: str | Path, *, normalize: bool = False,
               block_classes: int = BLOCK_CLASSES) -> tuple[tuple[int, int], np.dtype]:
    """Write the (C K, D) matrix (row c K + k: sub-center k of class c) to ``out``; ``normalize``:
    unit rows (each row divided by its L2 norm, computed in float32 or wider). Returns (shape, dtype)."""
    dtype = output_dtype(table.dtype, normalize=normalize)
    shape = (table.num_classes * table.rows_per_class, table.embedding_dim)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    size = f"{out} ({shape[0]} x {shape[1]} {dtype}, {dtype.itemsize * shape[0] * shape[1]:,} bytes)"
    with atomic_path(out, describe=size) as tmp, open(tmp, "wb") as f:
        # plain sequential writes, not a memory map: a full disk is an OSError here, not a SIGBUS
        np.lib.format.write_array_header_2_0(f, header)
        for _, _, rows in table.blocks(block_classes):
            if normalize:
                rows = torch.nn.functional.normalize(rows.to(torch.promote_types(rows.dtype, torch.float32)), dim=1)
            f.write(np.ascontiguousarray(rows.to(_TORCH[dtype]).numpy()).tobytes())
    return shape, dtype
