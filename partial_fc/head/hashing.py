"""Counter-based pseudo-random numbers: splitmix64 of (seed, step, class id).

A value depends on its counter alone, never on which rank computes it or how many there
are, which is what makes sampling and initialisation world-size invariant without any
communication. torch has no unsigned 64-bit arithmetic on every device, so the mixer runs
on int64 with wrap-around multiplication and masked (logical) right shifts; a pure-Python
reference in the tests checks it bit for bit.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def splitmix64_int(value: int) -> int:
    """splitmix64 finaliser on a Python int (unsigned 64-bit result)."""
    z = (value + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    # Logical shift: torch's >> on int64 is arithmetic, so clear the sign-extended bits.
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(counters: torch.Tensor) -> torch.Tensor:
    """Elementwise splitmix64 of int64 counters; the result is the unsigned value's bits as int64."""
    z = counters.to(torch.int64) + _signed(_GAMMA)
    z = (z ^ _shr(z, 30)) * _signed(_MUL1)
    z = (z ^ _shr(z, 27)) * _signed(_MUL2)
    return z ^ _shr(z, 31)


def stream_key(seed: int, *words: int) -> int:
    """Mix a seed and further counters (step, purpose tag, ...) into one 64-bit key."""
    key = splitmix64_int(seed & _MASK64)
    for word in words:
        key = splitmix64_int(key ^ (word & _MASK64))
    return key


def uniform_below(key: int, start: int, stop: int, probability: float, *, device: torch.device | str | None = None,
                  block: int = 65536) -> torch.Tensor:
    """(stop - start,) boolean mask: True where the uniform [0, 1) draw of ``(key, c)`` is below
    ``probability``, for the counters c in [start, stop).

    Uses the top 53 bits, compared as integers, so the comparison is exact and identical on
    every device. Works through ``block`` counters at a time so the int64 temporaries stay
    small (large fresh CPU buffers cost a page fault per 4 KiB every call).
    """
    threshold = int(probability * (1 << 53))
    out = torch.empty(stop - start, dtype=torch.bool, device=device)
    for lo in range(start, stop, block):
        hi = min(stop, lo + block)
        counters = torch.arange(lo, hi, dtype=torch.int64, device=device).add_(_signed(key))  # wraps mod 2^64
        torch.lt(_shr(splitmix64(counters), 11), threshold, out=out[lo - start : hi - start])
    return out
