"""The row-sparse optimizers as they were before the fused single-pass update (gather, update,
index_add_ back): the oracle that the fp32 path must match bit for bit."""

from __future__ import annotations

from collections.abc import Iterable

import torch


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


class _Scratch:
    """Per-optimizer block buffers reused every step (fresh CPU memory costs page faults)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        key = (slot, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._buffers[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf[: like.numel()].view(like.shape)


def _check(name: str, value: float, low: float, high: float | None = None) -> float:
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


class _RowSparseOptimizer(torch.optim.Optimizer):
    """Runs ``_update`` once per parameter with a gradient: its sampled rows (None: all) and their
    gradient rows, which subclasses process in blocks of ``block_rows``."""

    def __init__(self, params: Iterable[torch.Tensor], defaults: dict, *, block_rows: int) -> None:
        super().__init__(params, defaults)
        self.block_rows = block_rows
        self._scratch = _Scratch()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    rows, grads = sampled_rows(p.grad)
                    self._update(p, group, rows, grads)
        return loss

    def _blocks(self, rows: torch.Tensor | None, grads: torch.Tensor):
        """(lo, hi, row indices of the block or None) over the gradient rows."""
        for lo in range(0, grads.shape[0], self.block_rows):
            hi = min(grads.shape[0], lo + self.block_rows)
            yield lo, hi, None if rows is None else rows[lo:hi]

    def _update(self, p: torch.Tensor, group: dict, rows: torch.Tensor | None, grads: torch.Tensor) -> None:
        raise NotImplementedError


class UnfusedSGD(_RowSparseOptimizer):
    """SGD with momentum and coupled weight decay (torch.optim.SGD's update, dampening 0), lazily
    per row. ``lr`` may be changed by any torch LR scheduler."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, block_rows: int = 4096) -> None:
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov),
                         block_rows=block_rows)

    def _update(self, p: torch.Tensor, group: dict, rows: torch.Tensor | None, grads: torch.Tensor) -> None:
        lr, mu, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
        state = self.state[p]
        if mu and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state.get("momentum_buffer")
        for lo, hi, idx in self._blocks(rows, grads):
            g = grads[lo:hi]
            d = g
            if wd:
                d = torch.add(g, _get(p, idx, lo, hi, self._scratch.get(0, g)), alpha=wd, out=self._scratch.get(0, g))
            if mu:
                m = _get(buf, idx, lo, hi, self._scratch.get(1, g))
                m = torch.add(d, m, alpha=mu, out=m)  # mu * m + d in one pass
                _put(buf, idx, lo, hi, m)
                d = torch.add(d, m, alpha=mu, out=self._scratch.get(0, g)) if nesterov else m
            _add(p, idx, lo, hi, d, -lr)


class UnfusedAdamW(_RowSparseOptimizer):
    """AdamW (decoupled weight decay, torch.optim.AdamW's update) lazily per row, with a
    per-row step count for bias correction: a row's moments are corrected for the number of
    times that row was updated, which is what they have averaged over."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, block_rows: int = 4096) -> None:
        _check("lr", lr, 0.0)
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        _check("eps", eps, 0.0)
        _check("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay),
                         block_rows=block_rows)

    def _update(self, p: torch.Tensor, group: dict, rows: torch.Tensor | None, grads: torch.Tensor) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            # per-row update counts in the parameter's float dtype, as torch's AdamW keeps its
            # step: exact to 2^24 updates of one row (fp32), and Optimizer.load_state_dict
            # casts state tensors to the parameter dtype anyway
            state["row_steps"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
        for lo, hi, idx in self._blocks(rows, grads):
            g = grads[lo:hi]
            steps = _get(state["row_steps"], idx, lo, hi).add_(1)
            _put(state["row_steps"], idx, lo, hi, steps)
            m = _get(state["exp_avg"], idx, lo, hi, self._scratch.get(0, g)).lerp_(g, 1 - beta1)
            _put(state["exp_avg"], idx, lo, hi, m)
            v = _get(state["exp_avg_sq"], idx, lo, hi, self._scratch.get(1, g)).mul_(beta2).addcmul_(g, g, value=1 - beta2)
            _put(state["exp_avg_sq"], idx, lo, hi, v)
            steps = steps[:, None]
            bc1 = 1 - torch.pow(beta1, steps)
            bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, steps))
            # update = m / bc1 / (sqrt(v) / bc2_sqrt + eps), built in v's scratch
            update = v.sqrt_().div_(bc2_sqrt).add_(eps).reciprocal_().mul_(m).div_(bc1)
            w = _get(p, idx, lo, hi, self._scratch.get(0, g))
            update.add_(w, alpha=wd)  # decoupled decay: p -= lr * wd * p, with the same lr
            _add(p, idx, lo, hi, update, -lr)


def _get(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of the rows, in ``out`` when given (never a view: callers update it in place)."""
    if out is None:
        return t[lo:hi].clone() if idx is None else t.index_select(0, idx)
    return out.copy_(t[lo:hi]) if idx is None else torch.index_select(t, 0, idx, out=out)


def _put(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, value: torch.Tensor) -> None:
    if idx is None:
        t[lo:hi] = value
    else:
        t.index_copy_(0, idx, value)


def _add(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int, value: torch.Tensor, alpha: float) -> None:
    if idx is None:
        t[lo:hi].add_(value, alpha=alpha)
    else:
        t.index_add_(0, idx, value, alpha=alpha)
