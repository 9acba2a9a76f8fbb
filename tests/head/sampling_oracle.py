"""Pure-Python statement of the sampling rule, independent of the torch implementation:
class c is kept at step t iff it is a positive of the global batch or
splitmix64(c + key(seed, t)) >> 11 < floor(rate * 2^53), all arithmetic mod 2^64."""

from __future__ import annotations

M64 = (1 << 64) - 1
SAMPLE_TAG = 0x5A3B


def splitmix64(v: int) -> int:
    z = (v + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def key(seed: int, *words: int) -> int:
    k = splitmix64(seed & M64)
    for w in words:
        k = splitmix64(k ^ (w & M64))
    return k


def keep(seed: int, step: int, class_id: int, rate: float) -> bool:
    k = key(seed, SAMPLE_TAG, step)
    return (splitmix64((class_id + k) & M64) >> 11) < int(rate * (1 << 53))


def sampled_classes(seed: int, step: int, num_classes: int, rate: float, *, positives: list[int]) -> list[int]:
    pos = set(positives)
    return [c for c in range(num_classes) if c in pos or keep(seed, step, c, rate)]
