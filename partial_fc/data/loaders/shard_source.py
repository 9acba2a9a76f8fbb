"""Which shards each (rank, worker) reads: an endless, split, resampled sequence.

All streams share one sequence per (seed, epoch): random permutations of all shards, pass
after pass, end to end. Stream k of K (k = rank * workers + worker) takes positions k, k + K,
k + 2K, ... of it. So within a pass every shard is read once by exactly one stream (split by
node and worker), the streams never run dry whatever the shard count (resampled: with fewer
shards than streams, later passes hand out the same shards again), and all ranks agree
without communicating.
"""

from __future__ import annotations

from collections.abc import Iterator

from partial_fc.data.seeding import STREAM_SHARDS, rng_for


def stream_shards(num_shards: int, *, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[int]:
    """Endless shard indices for ``stream`` of ``num_streams``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= stream < num_streams:
        raise ValueError(f"stream must be in [0, {num_streams}), got {stream}")
    position, cached_pass, perm = stream, -1, None
    while True:
        this_pass = position // num_shards
        if this_pass != cached_pass:
            perm, cached_pass = rng_for(seed, STREAM_SHARDS, epoch, this_pass).permutation(num_shards), this_pass
        assert perm is not None
        yield int(perm[position % num_shards])
        position += num_streams
