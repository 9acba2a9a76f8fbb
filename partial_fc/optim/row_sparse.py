"""Row-sparse optimizers for sharded class centers.

The head's gradient is a sparse COO tensor holding only the rows sampled in the step. These
optimizers read and write only those rows, of the parameter and of its state, so one step
costs O(sampled rows x D) whatever the number of classes.

Semantics ("lazy", as TensorFlow's LazyAdam, PyTorch's SparseAdam and the row-wise momentum
of the first Partial FC implementation): a row that is not in the gradient is not touched
at all in that step: its momentum does not decay, no weight decay is applied, and (AdamW) its
bias-correction count does not advance. A sampled row gets exactly the update that
``torch.optim.SGD`` / ``torch.optim.AdamW`` would give it if its own history were the steps in
which it was sampled. With every row sampled every step (sample_rate = 1) the result equals
the dense optimizer. A dense gradient is treated as "every row sampled".

Rows are processed in blocks of ``block_rows``, each in one pass: the block's rows of the
weight and of its states are gathered into reused fp32 buffers (``index_select(out=)``),
decayed, updated and rounded there in place, and written back (``index_copy_``; an fp32 weight
takes ``index_add_``, which adds as it scatters), so the working memory stays small and bounded
and nothing is allocated per block. With fp32 weights and ``state_dtype="fp32"`` the arithmetic
is exactly that of the original unfused optimizer (a test holds them bit for bit).

Compact storage (see ``quantized`` and ``stochastic_round``): the weight is stored in its own
dtype (fp32, bf16 or fp16) and the states as ``state_dtype`` (fp32, bf16 or 8-bit); every
narrower store rounds stochastically with noise from (seed, optimizer step, global row id,
column), so results do not depend on how the rows are sharded when ``row_offset`` is the
global id of the shard's first row. Caveat: autograd hands a leaf its gradient in the leaf's
dtype, so a bf16 / fp16 weight receives a bf16 / fp16 gradient (bf16 keeps fp32's range; fp16
gradients below 6e-5 lose precision as subnormals, prefer bf16).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from partial_fc import kernels
from partial_fc.optim.quantized import SignedInt8State, read_rows, work_dtype
from partial_fc.optim.row_sparse_base import (RowSparseOptimizer, check_range, get_rows, lane, noise_lanes, put_rows,
                                              sampled_rows)

__all__ = ["RowSparseSGD", "RowSparseAdamW", "sampled_rows"]


class RowSparseSGD(RowSparseOptimizer):
    """SGD with momentum and coupled weight decay (torch.optim.SGD's update, dampening 0), lazily
    per row. ``lr`` may be changed by any torch LR scheduler.

    Persistent bytes per row of width D: weight (4, 2 or 2 D by its dtype) + momentum (4 D fp32,
    2 D bf16, D + 4 int8): 3 D + 4 with a bf16 weight and ``state_dtype="int8"``.
    """

    _states = (("momentum_buffer", True),)

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, block_rows: int = 4096,
                 state_dtype: str = "fp32", seed: int = 0, row_offset: int = 0, rounding: str = "stochastic") -> None:
        check_range("lr", lr, 0.0)
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("weight_decay", weight_decay, 0.0)
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov),
                         block_rows=block_rows, state_dtype=state_dtype, seed=seed, row_offset=row_offset,
                         rounding=rounding)

    def _expected(self, p):
        return super()._expected(p) if self._uses_momentum(p) else {}

    def _uses_momentum(self, p: torch.Tensor) -> bool:
        p = self._owner.get(p, p)  # staged rows of an offloaded table: its parameter's group
        return any(group["momentum"] for group in self.param_groups if any(q is p for q in group["params"]))

    def _update(self, p, group, rows, grads, key):
        lr, mu, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
        state = self._state(p) if mu else self.state[p]
        fmt = self._formats["momentum_buffer"]
        slot_w, slot_m, streams = noise_lanes(p.dtype != work_dtype(p), bool(mu) and fmt.rounds)
        if self._fused_update(p, state if mu else None, rows, grads, key, streams, slot_w, slot_m, group):
            return
        for lo, hi, idx in self._blocks(rows, grads):
            n = hi - lo
            g = self._grad_block(grads, lo, hi, p)
            noise = self._noise(key, idx, lo, hi, p, streams)
            w = None
            if wd or slot_w is not None:
                w = read_rows(p, idx, lo, hi, self._buffer("w", n, p), self._scratch, "w_in")
            d = g
            if wd:
                d = torch.add(g, w, alpha=wd, out=self._buffer("d", n, p))
            if mu:
                m = fmt.read(state, "momentum_buffer", idx, lo, hi, self._buffer("m", n, p), self._scratch)
                m = torch.add(d, m, alpha=mu, out=m)  # mu * m + d in one pass
                fmt.write(state, "momentum_buffer", idx, lo, hi, m, lane(noise, slot_m), self._scratch)
                d = torch.add(d, m, alpha=mu, out=self._buffer("d", n, p)) if nesterov else m
            self._apply(p, idx, lo, hi, w, d, -lr, lane(noise, slot_w))


    def _fused_update(self, p, state, rows, grads, key, streams, slot_w, slot_m, group) -> bool:
        """All rows in one fused pass (``partial_fc.kernels``), through the row indices, with the
        arithmetic and the noise of the blocks below (the same stored bits); False where the
        kernels do not apply (CUDA, fp16 or fp64 rows, rounding to nearest, no compiler)."""
        if p.dtype not in (torch.float32, torch.bfloat16) or grads.dtype not in (torch.float32, torch.bfloat16):
            return False
        m = scale = None
        if state is not None:  # in this optimizer's format (``_state`` converted it)
            int8 = isinstance(self._formats["momentum_buffer"], SignedInt8State)
            m = state["momentum_buffer_int8" if int8 else "momentum_buffer"]
            scale = state["momentum_buffer_scale"] if int8 else None
        if p.dim() != 2 or not kernels.applies(p, m, grads, rows):
            return False
        hyper = dict(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                     nesterov=group["nesterov"])
        if not streams and grads.dtype == torch.float32:  # fp32 rows and state: nothing rounds
            kernels.sgd_rows(p, m, grads, rows, **hyper)
        elif streams and self.rounding == "stochastic" and p.shape[1] <= kernels.COMPACT_MAX_D:
            keys, salt = self._noise_keys(key, rows, 0, grads.shape[0], p, streams)
            kernels.sgd_compact(p, m, scale, grads, rows, keys=keys, salt=salt, lane_w=slot_w, lane_m=slot_m, **hyper)
        else:
            return False
        torch.autograd.graph.increment_version(p)  # as an in-place torch op would
        return True


class RowSparseAdamW(RowSparseOptimizer):
    """AdamW (decoupled weight decay, torch.optim.AdamW's update) lazily per row, with a
    per-row step count for bias correction: a row's moments are corrected for the number of
    times that row was updated, which is what they have averaged over.

    Persistent bytes per row of width D: weight + two moments (8 D fp32, 4 D bf16, 2 D + 8
    int8) + the row's step count (4).
    """

    _states = (("exp_avg", True), ("exp_avg_sq", False))

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, block_rows: int = 4096,
                 state_dtype: str = "fp32", seed: int = 0, row_offset: int = 0, rounding: str = "stochastic") -> None:
        check_range("lr", lr, 0.0)
        check_range("betas[0]", betas[0], 0.0, 1.0)
        check_range("betas[1]", betas[1], 0.0, 1.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay),
                         block_rows=block_rows, state_dtype=state_dtype, seed=seed, row_offset=row_offset,
                         rounding=rounding)

    def _create_state(self, p):
        return dict(super()._create_state(p), row_steps=self._zeros(p)((p.shape[0],), work_dtype(p)))

    def _expected(self, p):
        # per-row update counts in the block's work dtype, as torch's AdamW keeps its step in the
        # parameter's float dtype: exact to 2^24 updates of one row (fp32)
        return dict(super()._expected(p), row_steps=((p.shape[0],), work_dtype(p)))

    def _update(self, p, group, rows, grads, key):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self._state(p)
        fm, fv = self._formats["exp_avg"], self._formats["exp_avg_sq"]
        slot_w, slot_m, slot_v, streams = noise_lanes(p.dtype != work_dtype(p), fm.rounds, fv.rounds)
        for lo, hi, idx in self._blocks(rows, grads):
            n = hi - lo
            g = self._grad_block(grads, lo, hi, p)
            noise = self._noise(key, idx, lo, hi, p, streams)
            steps = get_rows(state["row_steps"], idx, lo, hi).add_(1)
            put_rows(state["row_steps"], idx, lo, hi, steps)
            m = fm.read(state, "exp_avg", idx, lo, hi, self._buffer("m", n, p), self._scratch).lerp_(g, 1 - beta1)
            fm.write(state, "exp_avg", idx, lo, hi, m, lane(noise, slot_m), self._scratch)
            v = fv.read(state, "exp_avg_sq", idx, lo, hi, self._buffer("v", n, p), self._scratch)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            fv.write(state, "exp_avg_sq", idx, lo, hi, v, lane(noise, slot_v), self._scratch)
            steps = steps[:, None]
            bc1 = 1 - torch.pow(beta1, steps)
            bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, steps))
            # update = m / bc1 / (sqrt(v) / bc2_sqrt + eps), built in v's buffer
            update = v.sqrt_().div_(bc2_sqrt).add_(eps).reciprocal_().mul_(m).div_(bc1)
            w = read_rows(p, idx, lo, hi, self._buffer("w", n, p), self._scratch, "w_in")
            update.add_(w, alpha=wd)  # decoupled decay: p -= lr * wd * p, with the same lr
            self._apply(p, idx, lo, hi, w, update, -lr, lane(noise, slot_w))
