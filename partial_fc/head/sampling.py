"""Partial-FC class sampling: every positive of the global batch plus each negative kept
with probability ``sample_rate``, decided by a hash of (seed, step, class id).

Unlike a fixed-size top-k draw, a Bernoulli keep per class needs no communication and makes
the sampled set independent of the world size: the union of the ranks' sets at N ranks is
exactly the set at one rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from partial_fc.head.hashing import stream_key, uniform_below

_SAMPLE_TAG = 0x5A3B


@dataclass(frozen=True)
class Sampled:
    """The classes of this rank used in one step.

    rows: (S,) int64 sorted local row indices into the shard.
    target_pos: (B,) int64 position in ``rows`` of each sample's label, -1 where another rank owns it.
    """

    rows: torch.Tensor
    target_pos: torch.Tensor


def sample_classes(
    labels: torch.Tensor, *, start: int, stop: int, seed: int, step: int, sample_rate: float
) -> Sampled:
    """Sample this rank's classes for one step; ``labels`` are the global batch's class ids."""
    num_local = stop - start
    owned = (labels >= start) & (labels < stop)
    local = labels - start
    if sample_rate >= 1.0:
        rows = torch.arange(num_local, device=labels.device)
        return Sampled(rows=rows, target_pos=torch.where(owned, local, -1))
    keep = uniform_below(stream_key(seed, _SAMPLE_TAG, step), start, stop, sample_rate, device=labels.device)
    keep[local[owned]] = True
    rows = keep.nonzero().squeeze(1)
    pos = torch.searchsorted(rows, local.clamp(0, num_local - 1))
    return Sampled(rows=rows, target_pos=torch.where(owned, pos, -1))
