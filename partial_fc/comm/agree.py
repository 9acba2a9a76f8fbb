"""Agreeing on success: run a step on some ranks, then let every rank learn whether any failed.

Without it, an exception on one rank (a full disk, a corrupt file) leaves the others waiting in
their next collective until a timeout, with no word about why.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from partial_fc.comm.collectives import Collectives

T = TypeVar("T")


def run_agreed(comm: Collectives, fn: Callable[[], T], *, what: str, device: torch.device,
               ranks: tuple[int, ...] | None = None) -> T | None:
    """Run ``fn`` on ``ranks`` (all by default; the others return None) and agree on success.

    Every rank takes part in one all-gather of one integer on ``device``, so all call this
    together. A ValueError from ``fn`` is re-raised as it is on the rank that failed; any other
    exception becomes a ValueError saying ``what`` failed there. The other ranks raise a
    ValueError naming the rank(s) that failed.
    """
    result, error = None, None
    if ranks is None or comm.rank in ranks:
        try:
            result = fn()
        except Exception as e:  # re-raised below, after the other ranks know
            error = e
    flags = comm.all_gather(torch.tensor([error is not None], dtype=torch.int64, device=device)).tolist()
    if error is not None:
        if isinstance(error, ValueError):
            raise error
        raise ValueError(f"{what} failed on rank {comm.rank}: {type(error).__name__}: {error}") from error
    failed = [r for r, bad in enumerate(flags) if bad]
    if failed:
        raise ValueError(f"{what} failed on rank(s) {failed}; see their error")
    return result
