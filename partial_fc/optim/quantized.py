"""Storage formats of the class centers' rows and of their optimizer states.

Every format is read into and written from fp32 rows (the arithmetic of a step is fp32 inside
the block), and only for the rows of the block: ``idx`` the row indices, or None for the
contiguous rows [lo, hi). Writes that round take one uniform int32 noise word per element
(see ``stochastic_round``), which they consume, and are unbiased. Every tensor of a format has the parameter's row
count as its first dimension, so checkpoints reshard it like the weight.

State formats (``state_dtype``), bytes per row of width D:

- ``fp32``: the parameter's dtype when it is fp32 or wider (exactly the original optimizer),
  fp32 otherwise. 4 D.
- ``bf16``: stochastically rounded bf16, relative error < 2^-7 (one ulp). 2 D.
- ``int8``, signed (momentum, Adam's first moment): one fp32 scale per row, s = absmax / 127
  (times 1 + 2^-20, so that fp32 rounding never takes x / s past 127), q = stochastic
  round(x / s) in [-127, 127]. |q s - x| < s per element (a
  round-to-nearest bound would be s / 2, but round-to-nearest is biased: an element below s / 2
  would lose its momentum for good, and one changing by less than s / 2 per step would never
  change). A row (D = 512 for face embeddings) is the block: a row's state is read and written
  together, the scale costs 4 bytes per 512, and checkpoints keep one tensor per row. D + 4.
- ``int8``, non-negative (Adam's second moment v): its entries span many orders of magnitude
  within a row, and a linear code would round the small ones to 0, which makes Adam's update
  m / (sqrt(v) + eps) explode. So v / rowmax is coded like a tiny float: 5 exponent bits
  (30 binades below the row's max) and 3 mantissa bits, linear below 2^-30 (as subnormals
  are), code 0 exactly 0; stochastically rounded on this grid, so E[v_hat] = v. Bound:
  |v_hat - v| < v / 8 for v >= 2^-30 rowmax, < 2^-33 rowmax below. (bitsandbytes' 8-bit
  Adam, Dettmers et al. 2022, likewise uses a dynamic, exponent-carrying code for this state.)
  D + 4.
"""

from __future__ import annotations

import torch

from partial_fc.head.storage import WEIGHT_STORAGE
from partial_fc.optim.scratch import Scratch
from partial_fc.optim.stochastic_round import round_bf16_bits, round_fp16

STATE_DTYPES = ("fp32", "bf16", "int8")
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TINY = 1e-30  # scale floor of an all-zero row: any value works, q is 0 there
_CODE_SHIFT = 2.0 ** -96  # maps v / rowmax in [2^-30, 1] onto fp32 exponents 1..31
_CODE_DROP = 20  # fp32 bits below the 3 kept mantissa bits


def store_weight_as(weight: torch.nn.Parameter, name: str) -> None:
    """Keep the class centers ``weight`` in the storage dtype ``name`` from now on (the current
    values rounded to nearest, once, e.g. the initial rows). Call it before creating the optimizer."""
    if name not in WEIGHT_STORAGE:
        raise ValueError(f"class-center storage dtype must be one of {list(WEIGHT_STORAGE)}, got {name!r}")
    weight.data = weight.data.to(WEIGHT_STORAGE[name])


def work_dtype(p: torch.Tensor) -> torch.dtype:
    """The dtype a block is computed in: fp32, or the parameter's when it is wider."""
    return torch.promote_types(p.dtype, torch.float32)


def _words(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as int64 words when its rows allow it: the indexed copies cost per element,
    so an int8 row of 512 moves as 64 words instead of 512 bytes (bit-exact either way)."""
    if t.dim() == 2 and t.is_contiguous() and t.dtype.itemsize < 8 and (t.shape[1] * t.dtype.itemsize) % 8 == 0:
        return t.view(torch.int64)
    return t


def _rows(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
    if idx is None:
        return out.copy_(t[lo:hi])
    torch.index_select(_words(t), 0, idx, out=_words(out))
    return out


def _put(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, value: torch.Tensor) -> None:
    if idx is None:
        t[lo:hi] = value
    elif value.is_contiguous():
        _words(t).index_copy_(0, idx, _words(value))
    else:
        t.index_copy_(0, idx, value)


def read_rows(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, out: torch.Tensor, scratch: Scratch,
              slot: str) -> torch.Tensor:
    """Rows of ``t`` widened to ``out``'s dtype, in ``out``."""
    if t.dtype == out.dtype:
        return _rows(t, idx, lo, hi, out)
    return out.copy_(_rows(t, idx, lo, hi, scratch.buffer(slot, tuple(out.shape), t.dtype, out.device)))


def write_rows(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, value: torch.Tensor,
               noise: torch.Tensor | None, *, clobber: bool, scratch: Scratch, slot: str) -> None:
    """Store fp32 ``value`` into the rows of ``t``: exactly when ``t`` is as wide, else rounded
    stochastically with ``noise`` (None: to nearest, ties to even). ``clobber`` lets the
    rounding reuse ``value``'s memory."""
    if t.dtype == value.dtype:
        _put(t, idx, lo, hi, value)
    elif noise is None:
        narrow = scratch.buffer(slot + "_nearest", tuple(value.shape), t.dtype, value.device).copy_(value)
        _put(t, idx, lo, hi, narrow)
    elif t.dtype == torch.bfloat16:
        out = value.view(torch.int32) if clobber else scratch.buffer(slot, tuple(value.shape), torch.int32, value.device)
        high = round_bf16_bits(value, noise, out)
        if idx is not None:  # a contiguous copy first: the indexed write then moves int64 words
            high = scratch.buffer(slot + "_16", tuple(value.shape), torch.int16, value.device).copy_(high)
        _put(t.view(torch.int16), idx, lo, hi, high)
    elif t.dtype == torch.float16:
        shape = tuple(value.shape)
        src = value if clobber else scratch.buffer(slot + "_32", shape, torch.float32, value.device).copy_(value)
        _put(t, idx, lo, hi, round_fp16(src, noise, scratch.buffer(slot + "_16", shape, torch.float16, value.device)))
    else:
        raise ValueError(f"cannot store {value.dtype} rows into a {t.dtype} tensor; use one of {WEIGHT_DTYPES}")


class StateFormat:
    """How one state (``name``, e.g. "momentum_buffer") of a (rows, D) parameter is stored."""

    #: whether writes round (and take a noise stream)
    rounds = False

    def keys(self, name: str, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The state entries of this state: shape and dtype of each."""
        raise NotImplementedError

    def create(self, name: str, p: torch.Tensor, *, zeros=None) -> dict[str, torch.Tensor]:
        """Zero state; ``zeros(shape, dtype)`` allocates it elsewhere (an offloaded table)."""
        zeros = zeros or (lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=p.device))
        return {key: zeros(shape, dtype) for key, (shape, dtype) in self.keys(name, p).items()}

    def read(self, state: dict, name: str, idx, lo: int, hi: int, out: torch.Tensor, scratch: Scratch) -> torch.Tensor:
        raise NotImplementedError

    def write(self, state: dict, name: str, idx, lo: int, hi: int, value: torch.Tensor, noise, scratch: Scratch) -> None:
        """Store fp32 ``value`` (left unchanged) into the block's rows."""
        raise NotImplementedError


class PlainState(StateFormat):
    """One tensor of the block's work dtype (``fp32``) or bf16 (``bf16``), shaped like the parameter."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype  # None: the block's work dtype
        self.rounds = dtype is not None

    def keys(self, name, p):
        return {name: (tuple(p.shape), self.dtype or work_dtype(p))}

    def read(self, state, name, idx, lo, hi, out, scratch):
        return read_rows(state[name], idx, lo, hi, out, scratch, "state_in")

    def write(self, state, name, idx, lo, hi, value, noise, scratch):
        write_rows(state[name], idx, lo, hi, value, noise, clobber=False, scratch=scratch, slot="state_bits")


class SignedInt8State(StateFormat):
    """Per-row absmax int8, stochastically rounded (see the module docstring)."""

    rounds = True

    def keys(self, name, p):
        return {name + "_int8": (tuple(p.shape), torch.int8), name + "_scale": (tuple(p.shape[:1]), torch.float32)}

    def read(self, state, name, idx, lo, hi, out, scratch):
        n = out.shape[0]
        q = _rows(state[name + "_int8"], idx, lo, hi, scratch.buffer("state_q", tuple(out.shape), torch.int8, out.device))
        scale = _rows(state[name + "_scale"], idx, lo, hi, scratch.buffer("state_scale", (n,), torch.float32, out.device))
        return out.copy_(q).mul_(scale[:, None])  # one dtype per operation: mixed ones take a slow path

    def write(self, state, name, idx, lo, hi, value, noise, scratch):
        absmax = torch.maximum(value.amax(1), value.amin(1).neg_())  # two reductions, no (n, D) temporary
        # s a hair above absmax / 127 keeps |x / s| < 127 despite fp32 rounding, so no clamp is needed
        scale = absmax.clamp_min_(_TINY).mul_((1 + 2.0 ** -20) / 127.0)
        # round(x / s + u), u = noise / 2^32 uniform on [-1/2, 1/2): x / s rounded up with probability frac(x / s)
        y = scratch.get("state_y", value)
        if noise is None:  # round to nearest (even)
            torch.div(value, scale[:, None], out=y).round_()
        else:
            y.copy_(noise).mul_(2.0 ** -32)
            torch.addcdiv(y, value, scale[:, None], out=y).round_()
        q = scratch.buffer("state_q", tuple(value.shape), torch.int8, value.device).copy_(y)
        _put(state[name + "_int8"], idx, lo, hi, q)
        _put(state[name + "_scale"], idx, lo, hi, scale)


class NonNegativeCodeState(StateFormat):
    """v / rowmax in an unsigned 8-bit float code (5 exponent, 3 mantissa bits), stochastically
    rounded: the code is bits 20..27 of the fp32 pattern of v / rowmax * 2^-96, so adding 20
    uniform random bits below them rounds exactly as ``round_bf16_bits`` does, and values under
    2^-30 rowmax become fp32 subnormals, linear down to 0."""

    rounds = True

    def keys(self, name, p):
        return {name + "_code": (tuple(p.shape), torch.uint8), name + "_scale": (tuple(p.shape[:1]), torch.float32)}

    def read(self, state, name, idx, lo, hi, out, scratch):
        n = out.shape[0]
        code = _rows(state[name + "_code"], idx, lo, hi, scratch.buffer("state_q", tuple(out.shape), torch.uint8, out.device))
        scale = _rows(state[name + "_scale"], idx, lo, hi, scratch.buffer("state_scale", (n,), torch.float32, out.device))
        bits = out.view(torch.int32)
        bits.copy_(code).bitwise_left_shift_(_CODE_DROP)
        return out.mul_(1.0 / _CODE_SHIFT).mul_(scale[:, None])  # two steps: 2^96 rowmax may overflow fp32

    def write(self, state, name, idx, lo, hi, value, noise, scratch):
        scale = value.amax(1).clamp_min_(_TINY)
        y = torch.div(value, scale[:, None], out=scratch.get("state_y", value)).mul_(_CODE_SHIFT)
        bits = y.view(torch.int32)
        # + u, u = top 20 noise bits, uniform on [0, 2^20): carries into the code with probability
        # (dropped bits) / 2^20, exactly as ``round_bf16_bits`` does with 16
        if noise is not None:  # None: round to nearest (ties up)
            bits.add_(noise.bitwise_right_shift_(32 - _CODE_DROP))
        bits.add_(1 << (_CODE_DROP - 1))
        code = scratch.buffer("state_q", tuple(value.shape), torch.uint8, value.device).copy_(bits.bitwise_right_shift_(_CODE_DROP))
        _put(state[name + "_code"], idx, lo, hi, code)
        _put(state[name + "_scale"], idx, lo, hi, scale)


def state_format(state_dtype: str, *, signed: bool) -> StateFormat:
    """The format of ``state_dtype`` for a signed state (momentum) or a non-negative one (v)."""
    if state_dtype == "fp32":
        return PlainState(None)
    if state_dtype == "bf16":
        return PlainState(torch.bfloat16)
    if state_dtype == "int8":
        return SignedInt8State() if signed else NonNegativeCodeState()
    raise ValueError(f"state_dtype must be one of {list(STATE_DTYPES)}, got {state_dtype!r}")


def saved_format(entries: dict, name: str) -> tuple[StateFormat, str] | None:
    """(format, its name) in which the state ``name`` is held in ``entries``, from its keys and
    dtypes; None when it is not there."""
    if name + "_int8" in entries:
        return SignedInt8State(), "int8"
    if name + "_code" in entries:
        return NonNegativeCodeState(), "int8"
    value = entries.get(name)
    if torch.is_tensor(value) and value.is_floating_point():
        return PlainState(value.dtype), {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(value.dtype, "fp32")
    return None
