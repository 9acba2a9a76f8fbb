"""Assembling one rank's rows of the class-center matrix (and of any per-row tensor) from the
shards of a checkpoint saved at another world size. Pure functions: no files, no collectives.

Class c owns rows [c K, (c + 1) K) of the full matrix (K rows per class, K = 1 without
sub-centers), so a shard of classes [a, b) holds rows [a K, b K) and slicing by class is
slicing rows by K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_ranges(ranges: list[list[int]] | list[tuple[int, int]], num_classes: int) -> list[tuple[int, int]]:
    """The saved per-rank class ranges must tile [0, num_classes) in order."""
    out, expected = [], 0
    for r, (start, stop) in enumerate(ranges):
        if start != expected or stop <= start:
            raise ValueError(f"meta.json class ranges {ranges} do not tile [0, {num_classes}) (rank {r})")
        out.append((int(start), int(stop)))
        expected = stop
    if expected != num_classes:
        raise ValueError(f"meta.json class ranges {ranges} do not tile [0, {num_classes})")
    return out


def overlaps(ranges: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(old rank, lo, hi) for every saved shard sharing classes [lo, hi) with [start, stop)."""
    pieces = []
    for r, (a, b) in enumerate(ranges):
        lo, hi = max(a, start), min(b, stop)
        if lo < hi:
            pieces.append((r, lo, hi))
    return pieces


def assemble_rows(
    start: int, stop: int, *, rows_per_class: int, sources: list[tuple[int, int, int, torch.Tensor | None]],
    like: torch.Tensor, alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rows of classes [start, stop) from ``sources``: (lo, hi, source_start, tensor) where
    ``tensor`` holds the rows of classes [source_start, ...) and [lo, hi) is the part to copy.
    A None tensor contributes zeros (a shard whose optimizer had no state yet: for the lazy
    row-sparse optimizers, zero state is the same as no state). ``like`` gives dtype and trailing
    shape; ``alloc(shape, dtype)`` where the rows go (default: new host memory; an offloaded
    table's own memory, so a resume never holds a second copy of it). The sources must cover
    [start, stop) exactly."""
    k = rows_per_class
    shape = ((stop - start) * k, *like.shape[1:])
    out = torch.empty(shape, dtype=like.dtype) if alloc is None else alloc(shape, like.dtype)
    covered = 0
    for lo, hi, source_start, tensor in sources:
        dst = out[(lo - start) * k : (hi - start) * k]
        if tensor is None:
            dst.zero_()
        else:
            if tensor.dtype != like.dtype or tensor.shape[1:] != like.shape[1:]:
                raise ValueError(f"shards disagree: {tuple(tensor.shape)} {tensor.dtype} vs {tuple(like.shape)} {like.dtype}")
            dst.copy_(tensor[(lo - source_start) * k : (hi - source_start) * k])
        covered += hi - lo
    if covered != stop - start:
        raise ValueError(f"saved shards cover {covered} of the {stop - start} classes [{start}, {stop})")
    return out
