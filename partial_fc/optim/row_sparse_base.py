"""The shared loop of the row-sparse optimizers: parameters with a gradient, their sampled
rows, blocks of ``block_rows``; their state's format (create, check, load, convert); the
stochastic-rounding noise of a block. ``row_sparse`` holds the SGD and AdamW updates."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from partial_fc.optim.quantized import (STATE_DTYPES, WEIGHT_DTYPES, saved_format, state_format, work_dtype,
                                        write_rows)
from partial_fc.optim.scratch import Scratch
from partial_fc.optim.stochastic_round import BlockNoise, column_salt, row_keys, step_key


_CONVERSION_STEP = -1  # the noise of a format conversion: a step count no training step has
#: how narrower stores round: "stochastic" (unbiased; the default) or "nearest" (no noise: each
#: format rounds to nearest, ties to even, as torch's own casts do; the 8-bit v code's rare ties
#: go up); "nearest" exists to measure what stochastic rounding buys (the lost sub-half-ulp updates)
ROUNDINGS = ("stochastic", "nearest")


def sampled_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(row indices or None for all rows, gradient rows)."""
    if not grad.is_sparse:
        return None, grad
    if grad.sparse_dim() != 1:
        raise ValueError(f"row-sparse optimizers need a gradient sparse in dim 0 only, got sparse_dim={grad.sparse_dim()}")
    if not grad.is_coalesced():
        # autograd drops the coalesced flag when it stores a sparse gradient; strictly increasing
        # indices (what the head produces) are already coalesced, and checking is O(rows)
        rows = grad._indices()[0]
        if rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all()):
            return rows, grad._values()
        grad = grad.coalesce()
    return grad.indices()[0], grad.values()


def check_range(name: str, value: float, low: float, high: float | None = None) -> float:
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


class RowSparseOptimizer(torch.optim.Optimizer):
    """Runs ``_update`` once per parameter with a gradient: its sampled rows (None: all) and their
    gradient rows, which subclasses process in blocks of ``block_rows``.

    ``state_dtype``, ``seed`` and ``row_offset`` are properties of this optimizer, not of the
    checkpoint: ``row_offset`` is the global row id of the shard's first row at the current
    world size. The noise step count lives in each param group (``noise_step``) and is saved.
    """

    _states: tuple[tuple[str, bool], ...] = ()  # (name, signed) of each state tensor

    def __init__(self, params: Iterable[torch.Tensor], defaults: dict, *, block_rows: int, state_dtype: str,
                 seed: int, row_offset: int, rounding: str = "stochastic") -> None:
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {list(STATE_DTYPES)}, got {state_dtype!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rounding!r}")
        if not (isinstance(block_rows, int) and block_rows >= 1):
            raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
        if not (isinstance(row_offset, int) and row_offset >= 0):
            raise ValueError(f"row_offset must be an integer >= 0, got {row_offset!r}")
        super().__init__(params, dict(defaults, noise_step=0))
        self.block_rows, self.state_dtype, self.seed, self.row_offset = block_rows, state_dtype, int(seed), row_offset
        self.rounding = rounding
        # offloaded parameters during their step: the staged rows' parameter, and their ids in it
        self._owner: dict[torch.Tensor, torch.Tensor] = {}
        self._ids: dict[torch.Tensor, torch.Tensor] = {}
        self._formats = {name: state_format(state_dtype, signed=signed) for name, signed in self._states}
        self._scratch = Scratch()
        self._salts: dict[tuple[int, torch.device], torch.Tensor] = {}
        #: one line per state converted from another format at load time (for the caller's log)
        self.conversions: list[str] = []
        for group in self.param_groups:
            for p in group["params"]:
                self._check_param(p)

    def _check_param(self, p: torch.Tensor) -> None:
        if p.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"parameter dtype must be one of {list(WEIGHT_DTYPES)}, got {p.dtype}")
        compact = self.state_dtype != "fp32" or p.dtype in (torch.bfloat16, torch.float16)
        if compact and (p.dim() != 2 or p.dtype == torch.float64):
            raise ValueError(f"state_dtype={self.state_dtype!r} with a {p.dtype} weight needs a 2-D fp32/bf16/fp16 "
                             f"parameter (rows x D), got {p.dtype} of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            key = step_key(self.seed, group["noise_step"])
            for p in group["params"]:
                staged = staged_rows(p)
                if staged is not None:
                    self._update_staged(p, group, staged, key)
                elif p.grad is not None:
                    rows, grads = sampled_rows(p.grad)
                    self._update(p, group, rows, grads, key)
            group["noise_step"] += 1
        return loss

    def _update_staged(self, p: torch.Tensor, group: dict, staged, key: int) -> None:
        """An offloaded ``p`` (``head.offload``): its step's rows are on the device as the leaf
        ``staged.rows``; bring their state there too, update them like any rows (the noise keyed
        by their ids in the shard), and write rows and state back into the table."""
        table, w, ids = p.row_table, staged.rows, staged.ids_host
        state = self._state(p) if self._expected(p) else {}
        rows_state = {k: table.fetch(v, ids) if _per_row(v, p) else v for k, v in state.items()}
        self.state[w], self._owner[w], self._ids[w] = rows_state, p, staged.ids
        try:
            rows, grads = sampled_rows(w.grad)
            self._update(w, group, rows, grads, key)
            table.write_back(p.data, ids, w)
            for k, v in state.items():
                if _per_row(v, p):
                    table.write_back(v, ids, rows_state[k])
        finally:
            del self.state[w], self._owner[w], self._ids[w]
        table.release()  # written back: the next forward stages its own rows

    def _blocks(self, rows: torch.Tensor | None, grads: torch.Tensor):
        """(lo, hi, row indices of the block or None) over the gradient rows."""
        for lo in range(0, grads.shape[0], self.block_rows):
            hi = min(grads.shape[0], lo + self.block_rows)
            yield lo, hi, None if rows is None else rows[lo:hi]

    def _buffer(self, slot: str, rows: int, p: torch.Tensor) -> torch.Tensor:
        return self._scratch.buffer(slot, (rows, *p.shape[1:]), work_dtype(p), p.device)

    def _grad_block(self, grads: torch.Tensor, lo: int, hi: int, p: torch.Tensor) -> torch.Tensor:
        g = grads[lo:hi]
        return g if g.dtype == work_dtype(p) else self._buffer("grad", hi - lo, p).copy_(g)

    def _noise(self, key: int, idx: torch.Tensor | None, lo: int, hi: int, p: torch.Tensor, streams: int):
        """The noise of the block's global rows, or None when nothing rounds."""
        if streams == 0 or self.rounding == "nearest":
            return None
        keys, salt = self._noise_keys(key, idx, lo, hi, p, streams)
        return BlockNoise(keys, salt, self._scratch.buffer("noise", (hi - lo, p.shape[1]), torch.int32, p.device))

    def _noise_keys(self, key: int, idx: torch.Tensor | None, lo: int, hi: int, p: torch.Tensor,
                    streams: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, streams) int32 keys of the block's global rows and the (D,) column salts."""
        local = torch.arange(lo, hi, device=p.device) if idx is None else idx
        if p in self._ids:  # staged rows of an offloaded table: their ids in the shard
            local = self._ids[p][local]
        salt = self._salts.get((p.shape[1], p.device))
        if salt is None:
            salt = self._salts[(p.shape[1], p.device)] = column_salt(p.shape[1], p.device)
        return row_keys(key, local + self.row_offset, streams), salt

    def _apply(self, p: torch.Tensor, idx, lo: int, hi: int, w: torch.Tensor | None, update: torch.Tensor,
               alpha: float, noise: torch.Tensor | None) -> None:
        """p[rows] += alpha * update. A narrower p: on the gathered fp32 rows ``w``, written back
        with stochastic rounding. An fp32 p: ``index_add_``, which adds while it scatters (one
        indexed pass over the rows instead of an add and an indexed copy)."""
        if p.dtype != update.dtype:
            write_rows(p, idx, lo, hi, w.add_(update, alpha=alpha), noise, clobber=True, scratch=self._scratch,
                       slot="w_bits")
        elif idx is None:
            p[lo:hi].add_(update, alpha=alpha)
        else:
            p.index_add_(0, idx, update, alpha=alpha)

    def _create_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {}
        for name, fmt in self._formats.items():
            state.update(fmt.create(name, p, zeros=self._zeros(p)))
        return state

    @staticmethod
    def _zeros(p: torch.Tensor):
        """``zeros(shape, dtype)`` for ``p``'s state: on its device, or in its offloaded table."""
        table = getattr(p, "row_table", None)
        if table is not None:
            return table.zeros
        return lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=p.device)

    def _expected(self, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        expected = {}
        for name, fmt in self._formats.items():
            expected.update(fmt.keys(name, p))
        return expected

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader, except that each state tensor keeps its format's dtype (torch would cast
        int8 codes and fp32 scales to the parameter's dtype), and a state saved with another
        ``state_dtype`` is converted (listed in ``conversions``, for the caller to log)."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for group in self.param_groups:
            group.setdefault("noise_step", 0)
        for index, saved in state_dict["state"].items():
            p = params[index]
            expected = self._expected(p)
            entries = {k: v.to(device=p.device) if torch.is_tensor(v) else v for k, v in saved.items()}
            if self._in_format(entries, expected):
                self.state[p] = _homed(p, {k: v.to(dtype=expected[k][1]) if k in expected else v
                                           for k, v in entries.items()})
            elif expected:
                self.state[p] = self._converted(p, entries, f"parameter {index}")

    def _in_format(self, entries: dict, expected: dict) -> bool:
        """Same keys, shapes and dtypes (fp32 and fp64 count as one: torch casts between them)."""
        wide = (torch.float32, torch.float64)
        return all(torch.is_tensor(v := entries.get(k)) and tuple(v.shape) == shape
                   and (v.dtype == dtype or (v.dtype in wide and dtype in wide)) for k, (shape, dtype) in expected.items())

    def _state(self, p: torch.Tensor) -> dict:
        """The parameter's state, created on first use, converted when a checkpoint loader has set
        it (``self.state`` assigned directly) in another format."""
        state = self.state[p]
        expected = self._expected(p)
        if not state:
            state.update(self._create_state(p))
        elif not all(k in state and state[k].dtype == dtype for k, (_, dtype) in expected.items()):
            state = self.state[p] = self._converted(p, state, f"parameter of shape {tuple(p.shape)}")
        elif hasattr(p, "row_table"):  # a checkpoint loader set it directly: into the table's memory
            state = self.state[p] = _homed(p, state)
        return state

    def _converted(self, p: torch.Tensor, entries: dict, what: str) -> dict:
        """``entries`` (a state in any format these optimizers write) in this optimizer's format,
        block by block through fp32, stochastically rounded with the noise of a conversion step."""
        new = self._create_state(p)
        sources = {name: saved_format(entries, name) for name in self._formats}
        missing = [name for name, src in sources.items() if src is None]
        if missing:
            have = sorted(f"{k} ({v.dtype})" for k, v in entries.items() if torch.is_tensor(v))
            raise ValueError(f"optimizer state of {what} holds {have}, in no format of state_dtype "
                             f"{list(STATE_DTYPES)} for {missing}; load a checkpoint of this optimizer")
        key = step_key(self.seed, _CONVERSION_STEP)
        for name, fmt in self._formats.items():
            src, _ = sources[name]
            for lo in range(0, p.shape[0], self.block_rows):
                hi = min(p.shape[0], lo + self.block_rows)
                value = src.read(entries, name, None, lo, hi, self._buffer("convert", hi - lo, p), self._scratch)
                noise = self._noise(key, None, lo, hi, p, int(fmt.rounds))
                fmt.write(new, name, None, lo, hi, value, lane(noise, 0 if fmt.rounds else None), self._scratch)
        formatted = {k for name, fmt in self._formats.items() for k in fmt.keys(name, p)}
        for key_name, value in entries.items():  # the per-row step counts, as saved
            if key_name in new and key_name not in formatted:
                new[key_name].copy_(value)
        names = sorted({src_name for _, src_name in sources.values()})
        self.conversions.append(f"{what}: optimizer state converted from {'/'.join(names)} to state_dtype={self.state_dtype!r}")
        return new

    def _update(self, p: torch.Tensor, group: dict, rows: torch.Tensor | None, grads: torch.Tensor, key: int) -> None:
        raise NotImplementedError


def staged_rows(p: torch.Tensor):
    """The step's staged rows of an offloaded parameter when they have a gradient, else None."""
    table = getattr(p, "row_table", None)
    staged = None if table is None else table.staged
    return staged if staged is not None and staged.rows.grad is not None else None


def gradient(p: torch.Tensor) -> torch.Tensor | None:
    """``p``'s gradient: its own, or its staged rows' for an offloaded table."""
    staged = staged_rows(p)
    return p.grad if staged is None else staged.rows.grad


def _homed(p: torch.Tensor, state: dict) -> dict:
    """An offloaded parameter's per-row state tensors moved into its table's memory (mmap: the
    mapped files), others as they are."""
    table = getattr(p, "row_table", None)
    if table is None:
        return state
    return {k: table.adopt(v) if _per_row(v, p) else v for k, v in state.items()}


def _per_row(v, p: torch.Tensor) -> bool:
    """Whether a state entry holds one row per row of ``p`` (what a table stages and stores)."""
    return torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == p.shape[0]


def get_rows(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """A copy of the rows (never a view: callers update it in place)."""
    return t[lo:hi].clone() if idx is None else t.index_select(0, idx)


def put_rows(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, value: torch.Tensor) -> None:
    if idx is None:
        t[lo:hi] = value
    else:
        t.index_copy_(0, idx, value)


def noise_lanes(*rounds: bool) -> tuple:
    """Noise lane of each rounded tensor (None: stored exactly), then the number of lanes."""
    lanes, count = [], 0
    for flag in rounds:
        lanes.append(count if flag else None)
        count += int(flag)
    return (*lanes, count)


def lane(noise: BlockNoise | None, index: int | None) -> torch.Tensor | None:
    """The noise of one rounded tensor of the block (None: nothing rounds, or it is stored exactly)."""
    return None if noise is None else noise.lane(index)
