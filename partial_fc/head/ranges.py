"""Which classes each rank owns. Every other module asks this one function."""

from __future__ import annotations


def class_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of class ids owned by ``rank``.

    The first ``num_classes % world_size`` ranks own one class more, so shards differ in
    size by at most one row and any class count works at any world size.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_classes < world_size:
        raise ValueError(
            f"num_classes ({num_classes}) must be >= world_size ({world_size}): every rank owns at least one class"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
