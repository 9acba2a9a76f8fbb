"""Stochastic rounding with counter-based noise.

Rounding x to a coarser format stochastically picks one of its two neighbours lo <= x <= hi,
hi with probability (x - lo) / (hi - lo), so E[round(x)] = x: an update smaller than half a
unit in the last place (ulp) survives on average instead of being lost, as it is with
round-to-nearest.

Noise. The 32 noise bits of element (row, column) of rounded tensor ``stream`` at an optimizer
step are (K ^ S_column) * M mod 2^32, where K = splitmix64(step key + row * streams + stream)
(the head's counter hash, one call per row and stream), S a fixed table of splitmix64 column
salts and M an odd constant. So the noise is a function of (seed, step, global row id, column)
alone: a row is rounded the same way whichever rank holds it and however many ranks there are.
For a fixed element K is uniform, so K ^ S is, and multiplying by an odd M permutes the 2^32
values: every element's noise is exactly uniform, and independent from step to step. Only the
high bits are used (those mix all input bits). It costs two int32 operations per element, where
a full splitmix64 per element would cost twelve int64 ones per four elements.
"""

from __future__ import annotations

import torch

from partial_fc.head.hashing import _signed, splitmix64, stream_key

_NOISE_TAG = 0x5352  # "SR": separates these streams from the sampling and init streams
_SALT_KEY = stream_key(0x53414C54)  # "SALT": the fixed column table
_MIX = 0x9E3779B1 - (1 << 32)  # odd (the golden ratio's 32 bits), as an int32
_HALF16 = 1 << 15


def step_key(seed: int, step: int) -> int:
    """The 64-bit key of one optimizer step's noise."""
    return stream_key(seed, _NOISE_TAG, step)


def _low32(words: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 words, as int32 (little-endian view, as on every torch device)."""
    return words.view(torch.int32)[..., 0::2]


def row_keys(key: int, rows: torch.Tensor, streams: int) -> torch.Tensor:
    """(n, streams) int32 keys of the global rows ``rows`` (n,) int64 at the step of ``key``."""
    counters = rows[:, None] * streams + torch.arange(streams, dtype=torch.int64, device=rows.device)
    return _low32(splitmix64(counters.add_(_signed(key)))).contiguous()


def column_salt(dim: int, device: torch.device) -> torch.Tensor:
    """(dim,) int32 fixed random salts of the columns."""
    columns = torch.arange(dim, dtype=torch.int64, device=device).add_(_signed(_SALT_KEY))
    return _low32(splitmix64(columns)).contiguous()


def element_noise(keys: torch.Tensor, salt: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(n, D) uniform int32 noise of rows with keys (n,) and columns with salts (D,), in ``out``."""
    return torch.bitwise_xor(keys[:, None], salt, out=out).mul_(_MIX)  # int32 multiplication wraps


def round_bf16_bits(x: torch.Tensor, noise: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """bf16 bit patterns (an int16 view) of fp32 ``x`` rounded stochastically, built in the int32
    buffer ``out`` (which may be ``x.view(torch.int32)`` to round in place). Consumes ``noise``.

    bf16 is the top half of fp32. Adding u, uniform on [0, 2^16) (the noise's top 16 bits), to
    the bit pattern carries into the kept half with probability (low 16 bits) / 2^16, which is
    exactly (x - lo) / ulp: the magnitude is rounded up with that probability, for both signs
    (sign-magnitude), and a carry into the exponent lands on the next binade's first value,
    which is hi. So the rounding is exactly unbiased. Inf stays inf; values within an ulp of
    the largest finite bf16 may round to inf.
    """
    u = noise.bitwise_right_shift_(16)  # arithmetic: the top 16 bits minus 2^15
    torch.add(x.view(torch.int32), u, out=out).add_(_HALF16)
    return out.view(torch.int16)[..., 1::2]  # little-endian: the high halves


def round_fp16(x: torch.Tensor, noise: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """fp16 of fp32 ``x`` rounded stochastically, in the fp16 buffer ``out``; may overwrite ``x``
    and consumes ``noise``.

    x 2^-112 maps fp16's normal range [2^-14, 2^16) onto fp32 exponents 1..30 and its subnormals
    (step 2^-24) onto fp32 subnormals, where 2^13 fp32 steps make one fp16 step. So fp16 is the
    fp32 pattern of x 2^-112 with its low 13 bits cleared, everywhere, and adding 13 uniform bits
    before clearing them rounds exactly as ``round_bf16_bits`` does with 16. Scaling back by 2^112
    is exact and the fp16 conversion then is too. The one inexact step: x below 2^-14 loses its
    bits under 2^-37 when scaled (round-to-nearest), a bias of at most 2^-14 of an fp16 step there.
    Values past fp16's range become inf.
    """
    y = x.mul_(2.0 ** -112)
    bits = y.view(torch.int32)
    bits.add_(noise.bitwise_right_shift_(19)).add_(1 << 12).bitwise_and_(-(1 << 13))  # u = top 13 bits
    return out.copy_(y.mul_(2.0 ** 112))


class BlockNoise:
    """The noise of one block of rows, one lane (rounded tensor) at a time, each generated into
    the same reused (n, D) int32 buffer just before it is consumed."""

    def __init__(self, keys: torch.Tensor, salt: torch.Tensor, buffer: torch.Tensor) -> None:
        self.keys, self.salt, self.buffer = keys, salt, buffer

    def lane(self, index: int | None) -> torch.Tensor | None:
        if index is None:
            return None
        return element_noise(self.keys[:, index], self.salt, self.buffer)

