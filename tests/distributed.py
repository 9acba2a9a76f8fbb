"""Distributed tests run on real gloo ranks in spawned processes (see partial_fc.comm.local)."""

from __future__ import annotations

from typing import Any, Callable

from partial_fc.comm.local import free_port, run_ranks

__all__ = ["at_world_sizes", "free_port", "run_ranks"]


def at_world_sizes(fn: Callable[[int, int], Any], sizes: tuple[int, ...] = (1, 2, 3)) -> dict[int, list[Any]]:
    """``{N: [fn(rank, N) for each rank]}``: world size 1 in this process (no process group), the
    others on spawned gloo ranks."""
    return {n: [fn(0, 1)] if n == 1 else run_ranks(fn, n) for n in sizes}
