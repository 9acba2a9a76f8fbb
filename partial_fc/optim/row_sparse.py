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

Rows are processed in blocks of ``block_rows`` so the working memory stays small and bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _sampled_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(row indices or None for all rows, gradient rows)."""
    if grad.is_sparse:
        if grad.sparse_dim() != 1:
            raise ValueError(f"row-sparse optimizers need a gradient sparse in dim 0 only, got sparse_dim={grad.sparse_dim()}")
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    return None, grad


def _check(name: str, value: float, low: float, high: float | None = None) -> float:
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


class RowSparseSGD(torch.optim.Optimizer):
    """SGD with momentum and coupled weight decay (torch.optim.SGD's update, dampening 0), lazily
    per row. ``lr`` may be changed by any torch LR scheduler."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, block_rows: int = 8192) -> None:
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.block_rows = block_rows

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, grads = _sampled_rows(p.grad)
                state = self.state[p]
                if mu and "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state.get("momentum_buffer")
                for lo in range(0, grads.shape[0], self.block_rows):
                    hi = min(grads.shape[0], lo + self.block_rows)
                    idx = None if rows is None else rows[lo:hi]
                    d = grads[lo:hi].clone() if wd or (mu and nesterov) else grads[lo:hi]
                    if wd:
                        d.add_(_get(p, idx, lo, hi), alpha=wd)
                    if mu:
                        m = _get(buf, idx, lo, hi).mul_(mu).add_(d)
                        _put(buf, idx, lo, hi, m)
                        d = d.add_(m, alpha=mu) if nesterov else m
                    _add(p, idx, lo, hi, d, -lr)
        return loss


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch.optim.AdamW's update) lazily per row, with a
    per-row step count for bias correction: a row's moments are corrected for the number of
    times that row was updated, which is what they have averaged over."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, block_rows: int = 8192) -> None:
        _check("lr", lr, 0.0)
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        _check("eps", eps, 0.0)
        _check("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.block_rows = block_rows

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, grads = _sampled_rows(p.grad)
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["row_steps"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
                for lo in range(0, grads.shape[0], self.block_rows):
                    hi = min(grads.shape[0], lo + self.block_rows)
                    idx = None if rows is None else rows[lo:hi]
                    g = grads[lo:hi]
                    steps = _get(state["row_steps"], idx, lo, hi).add_(1)
                    _put(state["row_steps"], idx, lo, hi, steps)
                    m = _get(state["exp_avg"], idx, lo, hi).lerp_(g, 1 - beta1)
                    v = _get(state["exp_avg_sq"], idx, lo, hi).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    _put(state["exp_avg"], idx, lo, hi, m)
                    _put(state["exp_avg_sq"], idx, lo, hi, v)
                    steps = steps.to(p.dtype)[:, None]
                    bc1 = 1 - torch.pow(beta1, steps)
                    bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, steps))
                    update = (v.sqrt_().div_(bc2_sqrt).add_(eps)).reciprocal_().mul_(m).div_(bc1)
                    w = _get(p, idx, lo, hi)
                    update.add_(w, alpha=wd)  # decoupled decay: p -= lr * wd * p, with the same lr
                    _add(p, idx, lo, hi, update, -lr)
        return loss


def _get(t: torch.Tensor, idx: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """A fresh copy of the rows (never a view: callers update it in place)."""
    return t[lo:hi].clone() if idx is None else t.index_select(0, idx)


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
