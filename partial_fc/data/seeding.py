"""Counter-based seeds: every random choice in the data layer is a pure function of a tuple of
integers (seed, stream, ids...), never of process ids, worker counts or call order."""

from __future__ import annotations

import numpy as np

# Streams keep the draws for different purposes independent even when the other ids coincide.
STREAM_IDENTITY = 1
STREAM_IMAGE = 2
STREAM_PAIRS = 3
STREAM_ORDER = 4
STREAM_NOISE = 5
STREAM_SHARDS = 6
STREAM_WORKER = 7
STREAM_CONVERT = 8


def derive_seed(*key: int) -> int:
    """A 64-bit seed from a tuple of non-negative integers (SeedSequence hashing)."""
    for k in key:
        if k < 0:
            raise ValueError(f"seed components must be non-negative integers, got {key}")
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])


def rng_for(*key: int) -> np.random.Generator:
    """A numpy Generator determined by ``key`` alone."""
    for k in key:
        if k < 0:
            raise ValueError(f"seed components must be non-negative integers, got {key}")
    return np.random.default_rng([int(k) for k in key])
