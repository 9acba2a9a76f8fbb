"""Fused CPU kernels for the head's step (``cpu.c``), built on first use and loaded with ctypes.

On CPU the head's step beyond its three GEMMs is a chain of memory-bound passes (gathers,
scales, max, exp, sums, the optimizer's adds and indexed writes), each reading and writing
its rows once per operation. The kernels here do each phase in one pass: the row-sparse SGD
update (weight decay, momentum, update, written in place through the row indices), the
gather of the sampled rows with their norms, the tile's scale-and-max and exp-and-sum, the
backward's tile scaling and the normalised-weight projection of the class-row gradient.

Build: the C source is compiled once per machine with the system C compiler (``$CC``, else
``cc``/``gcc``), ``-O3 -march=native -ffp-contract=off``, into ``$PARTIAL_FC_KERNEL_DIR``
(default ``~/.cache/partial-fc/kernels``) under a name hashed from the source, the flags, the
compiler and the CPU, by a temporary file renamed into place (ranks may build at once).
``PARTIAL_FC_KERNELS``: ``auto`` (default: use them when they build), ``off`` (the eager torch
ops everywhere), ``on`` (an error when they cannot be built). Without a compiler the head runs
its eager path, with the same results up to rounding (``why_unavailable()`` says why).

The kernels apply to contiguous CPU fp32 tensors (bf16 rows for the gather); everything else
(CUDA, fp64, fp16) takes the eager path. Threads: ``torch.get_num_threads()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-fPIC", "-shared", "-pthread",
         # gcc keeps AVX-512 machines at 256-bit vectors by default; the exp and the dots run 1.5-2x faster at 512
         *(("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()))
MODES = ("auto", "on", "off")

_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernels are not available (None: not tried yet, or loaded)
_tried = False
_override: bool | None = None  # set by ``enabled_as`` (tests, benchmarks)

_p, _i64, _int, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "pfc_sgd_f32": (_p, _p, _p, _p, _i64, _i64, _f32, _f32, _f32, _int, _int),
    "pfc_gather_rows": (_p, _p, _i64, _i64, _int, _p, _p, _int),
    "pfc_scale_colmax": (_p, _p, _i64, _i64, _p, _int, _int),
    "pfc_exp_shift": (_p, _p, _i64, _i64, _p, _int, _int),
    "pfc_scale_tile": (_p, _p, _p, _i64, _i64, _p, _p, _int),
    "pfc_project_rows": (_p, _p, _p, _i64, _i64, _int),
    "pfc_to_bf16": (_p, _p, _i64, _int),
    "pfc_sgd_compact": (_p, _int, _p, _int, _p, _p, _int, _p, _i64, _i64, _f32, _f32, _f32, _int, _f32, _p, _int,
                        _int, _int, _p, _int),
}
#: the widest row the compact update takes (its per-thread row buffers)
COMPACT_MAX_D = 8192
#: the int8 momentum's scale: absmax / 127, a hair above (optim/quantized.py)
INT8_SCALE = (1 + 2.0 ** -20) / 127.0
_M_KINDS = {None: 0, torch.float32: 1, torch.bfloat16: 2, torch.int8: 3}


def mode() -> str:
    value = os.environ.get("PARTIAL_FC_KERNELS", "auto")
    if value not in MODES:
        raise ValueError(f"PARTIAL_FC_KERNELS must be one of {list(MODES)}, got {value!r}")
    return value


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its flags (a shared cache directory
    may serve different machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep)) or platform.machine()


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_id()]).encode()).hexdigest()
    directory = Path(os.environ.get("PARTIAL_FC_KERNEL_DIR") or Path.home() / ".cache" / "partial-fc" / "kernels")
    target = directory / f"cpu-{digest[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{cc} failed on {SOURCE} (exit {done.returncode}): {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _reason, _tried
    if _tried:
        return _lib
    _tried = True
    if mode() == "off":
        _reason = "PARTIAL_FC_KERNELS=off"
        return None
    cc = _compiler()
    try:
        if cc is None:
            raise RuntimeError("no C compiler found (set CC, or install gcc)")
        lib = ctypes.CDLL(str(_build(cc)))
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, (ctypes.c_int if name == "pfc_sgd_compact" else None)
        _lib = lib
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _reason = str(err)
        if mode() == "on":
            raise RuntimeError(f"PARTIAL_FC_KERNELS=on, but the fused CPU kernels cannot be built: {err}") from err
    return _lib


def enabled() -> bool:
    """Whether the head and the optimizer use the fused kernels where they apply."""
    if _override is not None:
        return _override and _load() is not None
    return _load() is not None


def why_unavailable() -> str | None:
    """None when the kernels are in use, else the one-line reason."""
    if enabled():
        return None
    if _override is False:
        return "disabled here"
    return _reason


def describe() -> str:
    """One line for a log: which path the CPU head takes."""
    reason = why_unavailable()
    return "fused CPU kernels" if reason is None else f"eager torch ops ({reason})"


@contextlib.contextmanager
def enabled_as(flag: bool):
    """Use (True) or bypass (False) the kernels inside the block; for A/B tests and benchmarks."""
    previous = _override
    force(flag)
    try:
        yield
    finally:
        force(previous)


def force(flag: bool | None) -> None:
    """Use (True) or bypass (False) the kernels in this process from now on; None: as
    ``PARTIAL_FC_KERNELS`` says."""
    global _override
    _override = flag


def applies(*tensors: torch.Tensor | None) -> bool:
    """The kernels are on and every given tensor is a contiguous CPU tensor."""
    return enabled() and all(t is None or (t.device.type == "cpu" and t.is_contiguous()) for t in tensors)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return torch.get_num_threads()


def _check(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device} "
                         f"(contiguous={t.is_contiguous()})")


def _check_rows(table: torch.Tensor, idx: torch.Tensor | None, n: int, d: int, name: str) -> None:
    """The kernels index raw memory: n row ids (or the first n rows) inside a (rows, d) table."""
    if table.dim() != 2 or table.shape[1] != d:
        raise ValueError(f"{name} must have rows of width {d}, got shape {tuple(table.shape)}")
    if idx is None:
        if n > table.shape[0]:
            raise ValueError(f"{n} rows asked of {name} with {table.shape[0]}")
    elif idx.dim() != 1 or idx.shape[0] != n:
        raise ValueError(f"idx must hold {n} row ids, got shape {tuple(idx.shape)}")
    elif n:
        low, high = (int(v) for v in torch.aminmax(idx))  # one pass over the ids
        if low < 0 or high >= table.shape[0]:
            raise ValueError(f"idx must be in [0, {table.shape[0]}) for {name}, got [{low}, {high}]")


def _check_update(w: torch.Tensor, m: torch.Tensor | None, g: torch.Tensor, idx: torch.Tensor | None) -> tuple[int, int]:
    """What both SGD kernels need of their rows: (n, d) of the gradient rows g, ids of w's rows
    (contiguous int64) and a momentum m shaped like w."""
    if idx is not None:
        _check(idx, torch.int64, "idx")
    n, d = g.shape
    _check_rows(w, idx, n, d, "w")
    if m is not None and m.shape != w.shape:
        raise ValueError(f"m must be shaped like w {tuple(w.shape)}, got {tuple(m.shape)}")
    return n, d


def sgd_rows(w: torch.Tensor, m: torch.Tensor | None, g: torch.Tensor, idx: torch.Tensor | None, *, lr: float,
             momentum: float, weight_decay: float, nesterov: bool) -> None:
    """SGD (momentum, coupled decay) on rows ``idx`` (distinct; None: the first ``g.shape[0]``
    rows) of ``w`` and ``m`` (None: no momentum), in place, with gradient rows ``g``."""
    _check(w, torch.float32, "w")
    _check(g, torch.float32, "g")
    if m is not None:
        _check(m, torch.float32, "m")
    n, d = _check_update(w, m, g, idx)
    _load().pfc_sgd_f32(w.data_ptr(), _ptr(m), g.data_ptr(), _ptr(idx), n, d, -lr, momentum, weight_decay,
                        int(nesterov), _threads())


def gather_rows(src: torch.Tensor, idx: torch.Tensor | None, out: torch.Tensor | None,
                inv_norm: torch.Tensor | None) -> None:
    """``out`` = src[idx] in fp32 (src fp32 or bf16) and ``inv_norm`` = 1 / max(|row|, 1e-12);
    out None (fp32 src): only the norms of src's rows idx (or of all of them)."""
    if src.dtype not in (torch.float32, torch.bfloat16) or not src.is_contiguous():
        raise ValueError(f"src must be a contiguous fp32 or bf16 tensor, got {src.dtype}")
    if out is None and src.dtype != torch.float32:
        raise ValueError("a bf16 source needs out= for its fp32 rows")
    for t, name in ((out, "out"), (inv_norm, "inv_norm")):
        if t is not None:
            _check(t, torch.float32, name)
    if idx is not None:
        _check(idx, torch.int64, "idx")
    n = idx.shape[0] if idx is not None else (out.shape[0] if out is not None else src.shape[0])
    _check_rows(src, idx, n, src.shape[1], "src")
    if (out is not None and tuple(out.shape) != (n, src.shape[1])) or (inv_norm is not None and inv_norm.numel() != n):
        raise ValueError(f"out must be ({n}, {src.shape[1]}) and inv_norm ({n},)")
    _load().pfc_gather_rows(src.data_ptr(), _ptr(idx), n, src.shape[1], int(src.dtype == torch.bfloat16), _ptr(out),
                            _ptr(inv_norm), _threads())


def _check_tile(z: torch.Tensor, row: torch.Tensor | None, *cols: torch.Tensor | None) -> tuple[int, int]:
    """A (c, b) fp32 tile with (c,) row and (b,) column vectors: the kernels read them raw."""
    _check(z, torch.float32, "z")
    if z.dim() != 2:
        raise ValueError(f"z must be a (classes, batch) tile, got shape {tuple(z.shape)}")
    c, b = z.shape
    for t, n, name in ((row, c, "row_scale"), *((t, b, "a column vector") for t in cols)):
        if t is not None:
            _check(t, torch.float32, name)
            if t.numel() != n:
                raise ValueError(f"{name} must hold {n} values for a {tuple(z.shape)} tile, got {t.numel()}")
    return c, b


def scale_colmax(z: torch.Tensor, row_scale: torch.Tensor | None, colmax: torch.Tensor, *,
                 accumulate: bool = False) -> None:
    """z *= row_scale[:, None] in place (None: unchanged); colmax = z.amax(0), or (accumulate)
    colmax = max(colmax, z.amax(0)): a tile's max gathered block by block."""
    c, b = _check_tile(z, row_scale, colmax)
    _load().pfc_scale_colmax(z.data_ptr(), _ptr(row_scale), c, b, colmax.data_ptr(), int(accumulate), _threads())


def exp_shift(z: torch.Tensor, shift: torch.Tensor, colsum: torch.Tensor | None, *, store: bool = True) -> None:
    """z = exp(z - shift[None, :]) in place (store False: z is left as it is); colsum = the
    column sums of those exponentials (None: not summed), the same bits either way."""
    c, b = _check_tile(z, None, shift, colsum)
    if not store and colsum is None:
        raise ValueError("exp_shift with store=False needs colsum")
    _load().pfc_exp_shift(z.data_ptr(), shift.data_ptr(), c, b, _ptr(colsum), int(store), _threads())


def scale_tile(z: torch.Tensor, row_scale: torch.Tensor | None, col_scale: torch.Tensor, *,
               shift: torch.Tensor | None = None, out: torch.Tensor | None = None) -> None:
    """out = e * col_scale[None, :] * row_scale[:, None] (row_scale None: 1) with e = z, or
    e = exp(z - shift[None, :]) (``exp_shift``'s exponential, bit for bit); out None: z, in place."""
    c, b = _check_tile(z, row_scale, col_scale, shift)
    if out is not None:
        _check(out, torch.float32, "out")
        if out.shape != z.shape:
            raise ValueError(f"out must be shaped like z {tuple(z.shape)}, got {tuple(out.shape)}")
    _load().pfc_scale_tile(z.data_ptr(), _ptr(row_scale), col_scale.data_ptr(), c, b, _ptr(shift), _ptr(out),
                           _threads())


def project_rows(g: torch.Tensor, w: torch.Tensor, inv_norm: torch.Tensor) -> None:
    """g -= (w . g) inv_norm^2 w, row by row, in place."""
    _check(g, torch.float32, "g")
    _check(w, torch.float32, "w")
    _check(inv_norm, torch.float32, "inv_norm")
    n, d = g.shape
    _load().pfc_project_rows(g.data_ptr(), w.data_ptr(), inv_norm.data_ptr(), n, d, _threads())


def sgd_compact(w: torch.Tensor, m: torch.Tensor | None, m_scale: torch.Tensor | None, g: torch.Tensor,
                idx: torch.Tensor | None, *, lr: float, momentum: float, weight_decay: float, nesterov: bool,
                keys: torch.Tensor, salt: torch.Tensor, lane_w: int | None, lane_m: int | None) -> None:
    """``sgd_rows`` for a bf16 or fp32 weight ``w`` with fp32, bf16 or int8 momentum ``m``
    (``m_scale``: int8's per-row scales), gradient rows fp32 or bf16; every narrower store
    rounded stochastically with the noise of (row ``keys`` (n, streams) int32, column ``salt``
    (D,) int32) in lanes ``lane_w`` / ``lane_m`` (None: that tensor is stored exactly)."""
    if w.dtype not in (torch.float32, torch.bfloat16) or g.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"w and g must be fp32 or bf16, got {w.dtype} and {g.dtype}")
    for t, name in ((w, "w"), (g, "g"), (m, "m")):
        if t is not None and (t.device.type != "cpu" or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous CPU tensor")
    if m is not None and m.dtype not in _M_KINDS:
        raise ValueError(f"momentum must be fp32, bf16 or int8, got {m.dtype}")
    if m is not None and m.dtype == torch.int8:
        _check(m_scale, torch.float32, "m_scale")
    _check(keys, torch.int32, "keys")
    _check(salt, torch.int32, "salt")
    n, d = _check_update(w, m, g, idx)
    if m is not None and m.dtype == torch.int8 and m_scale.shape != (w.shape[0],):
        raise ValueError(f"m_scale must hold one scale per row ({w.shape[0]},), got {tuple(m_scale.shape)}")
    if keys.dim() != 2 or keys.shape[0] != n or salt.shape[0] != d:
        raise ValueError(f"keys must be ({n}, streams) and salt ({d},), got {tuple(keys.shape)} and {tuple(salt.shape)}")
    done = _load().pfc_sgd_compact(
        w.data_ptr(), int(w.dtype == torch.bfloat16), _ptr(m), _M_KINDS[None if m is None else m.dtype], _ptr(m_scale),
        g.data_ptr(), int(g.dtype == torch.bfloat16), _ptr(idx), n, d, -lr, momentum, weight_decay, int(nesterov),
        INT8_SCALE, keys.data_ptr(), keys.shape[1], -1 if lane_w is None else lane_w, -1 if lane_m is None else lane_m,
        salt.data_ptr(), _threads())
    if done != 0:
        raise ValueError(f"rows of width {d} exceed the fused update's {COMPACT_MAX_D}")


def to_bf16(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out.copy_(src)`` for fp32 ``src`` and bf16 ``out``: the same bits (to nearest, ties to
    even; a NaN stays a NaN), in one pass."""
    _check(src, torch.float32, "src")
    _check(out, torch.bfloat16, "out")
    if out.shape != src.shape:
        raise ValueError(f"out must be shaped like src {tuple(src.shape)}, got {tuple(out.shape)}")
    _load().pfc_to_bf16(src.data_ptr(), out.data_ptr(), src.numel(), _threads())
    return out
