"""Class-center initialisation that depends on (seed, class id) alone.

Rows are generated in fixed blocks of ``BLOCK_ROWS`` consecutive classes, each block from a
generator seeded by (seed, block index). A rank builds only the blocks overlapping its range,
so the cost is O(rows owned) and row c is the same at every world size and after resharding.
"""

from __future__ import annotations

import torch

from partial_fc.head.hashing import stream_key

BLOCK_ROWS = 4096
_INIT_TAG = 0x1A17


def init_class_rows(
    seed: int, start: int, stop: int, dim: int, *, std: float = 0.01, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows ``[start, stop)`` of a (num_classes, dim) matrix with N(0, std^2) entries.

    Scaled in fp32 (or ``dtype`` when wider), then stored as ``dtype``, one block at a time:
    a bf16 / fp16 result is rounded to nearest once, from the fp32 value."""
    out = torch.empty(stop - start, dim, dtype=dtype, device=device)
    work = torch.promote_types(dtype, torch.float32)
    generator = torch.Generator(device="cpu")
    first_block, last_block = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
    for block in range(first_block, last_block + 1):
        generator.manual_seed(stream_key(seed, _INIT_TAG, block) & ((1 << 63) - 1))
        rows = torch.randn(BLOCK_ROWS, dim, generator=generator, dtype=torch.float32)
        block_start = block * BLOCK_ROWS
        lo, hi = max(start, block_start), min(stop, block_start + BLOCK_ROWS)
        # the same elementwise products as scaling the whole fp32 / fp64 result afterwards
        out[lo - start : hi - start] = rows[lo - block_start : hi - block_start].to(work).mul_(std)
    return out
