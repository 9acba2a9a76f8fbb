"""``HeadOptimizer``: one optimizer step of everything the criterion trains, outside the engine.

The backbone engine takes its own step (clip, overflow check, update); the head's parameters
live outside it and need the same decisions, made here:

    applied = engine.step()
    applied = head_opt.step(loss_scale=scale, backbone_applied=applied)

``step`` divides the gradients by the loss scale the engine's ``backward`` multiplied them by
and decides, the same on every rank, whether they are finite (fp16 only: one all-reduce MAX of
one float and a host sync); clips them by their total norm over all ranks' shards (one
all-reduce SUM of one float); updates when both the head and the backbone may; zeroes them.

The class weights (this rank's shard, row-sparse gradient) take ``RowSparseSGD`` /
``RowSparseAdamW``. Any other trainable parameter of the criterion (a learned scale) is
replicated and its gradient is already identical on every rank: it takes plain SGD / AdamW at
the same lr, without weight decay, and enters the finite check and the clip norm once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from partial_fc.comm import Collectives
from partial_fc.optim.quantized import STATE_DTYPES
from partial_fc.optim.row_sparse import RowSparseAdamW, RowSparseSGD, sampled_rows
from partial_fc.optim.row_sparse_base import RowSparseOptimizer, gradient

NAMES = ("sgd", "adamw")


def check_optim_state(optim_state: str) -> None:
    """``optim_state``: the storage of the class centers' optimizer state (``head.optim_state``)."""
    if optim_state not in STATE_DTYPES:
        raise ValueError(f"optim_state must be one of {list(STATE_DTYPES)}, got {optim_state!r}")


class HeadOptimizer:
    """``sharded``: parameters whose rows are split over the ranks (the class weights);
    ``dense``: replicated parameters. ``loss_scaling``: the gradients carry an fp16 loss scale,
    so ``step`` unscales them and checks them for inf/nan. ``max_grad_norm``: clip (None: off).

    ``param_groups``, ``state`` and ``state_dict()`` follow ``torch.optim.Optimizer`` (the
    sharded groups first, then the dense one), which is what the checkpoints read and write.

    ``optim_state`` (fp32, bf16, int8) is the storage of the sharded parameters' state; ``seed``
    and ``row_offset`` (the global row id of this shard's first row) key its stochastic
    rounding, so the rounding does not depend on the world size. ``rounding`` "nearest" turns
    stochastic rounding off (an ablation: ``row_sparse_base.ROUNDINGS``).
    """

    def __init__(self, *, sharded: Sequence[nn.Parameter], dense: Sequence[nn.Parameter] = (), name: str, lr: float,
                 comm: Collectives, momentum: float = 0.0, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, max_grad_norm: float | None = None,
                 loss_scaling: bool = False, optim_state: str = "fp32", seed: int = 0, row_offset: int = 0,
                 rounding: str = "stochastic") -> None:
        check_optim_state(optim_state)
        if name not in NAMES:
            raise ValueError(f"unknown head optimizer {name!r}; choose from {list(NAMES)}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.comm, self.max_grad_norm, self.loss_scaling = comm, max_grad_norm, loss_scaling
        self._optimizers: list[torch.optim.Optimizer] = []
        if sharded:
            self._optimizers.append(
                RowSparseSGD(sharded, lr=lr, momentum=momentum, weight_decay=weight_decay, state_dtype=optim_state,
                             seed=seed, row_offset=row_offset, rounding=rounding) if name == "sgd"
                else RowSparseAdamW(sharded, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                    state_dtype=optim_state, seed=seed, row_offset=row_offset, rounding=rounding))
        if dense:
            self._optimizers.append(
                torch.optim.SGD(dense, lr=lr, momentum=momentum, weight_decay=0.0) if name == "sgd"
                else torch.optim.AdamW(dense, lr=lr, betas=betas, eps=eps, weight_decay=0.0))
        self._sharded, self._dense = list(sharded), list(dense)

    # -- the step -------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def step(self, *, loss_scale: float = 1.0, backbone_applied: bool = True) -> bool:
        """Unscale and check (with ``loss_scaling``), clip, update, zero the gradients. Returns
        True when the update was applied: the gradients were finite and ``backbone_applied``
        (the engine took its step), so backbone and head skip together on an fp16 overflow of
        the backbone. Call it at every accumulation boundary, on every rank."""
        finite = self._unscale_and_check(loss_scale) if self.loss_scaling else True
        if finite and self.max_grad_norm:
            self._clip(self.max_grad_norm)
        applied = finite and backbone_applied
        if applied:
            for opt in self._optimizers:
                opt.step()
        self.zero_grad()
        return applied

    def zero_grad(self) -> None:
        for opt in self._optimizers:
            opt.zero_grad(set_to_none=True)

    def _grads(self, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        """The gradient values (a sparse gradient's sampled rows; an offloaded table's staged
        rows'), as views to change in place."""
        return [sampled_rows(g)[1] for g in map(gradient, params) if g is not None]

    def _device(self) -> torch.device:
        """Where the sharded parameters compute (an offloaded table's compute device)."""
        p = self._sharded[0]
        return p.row_table.device if hasattr(p, "row_table") else p.device

    def _unscale_and_check(self, loss_scale: float) -> bool:
        """The engine's ``backward`` multiplied the loss by ``loss_scale``; divide it out here. The
        backbone's overflow check sees all-reduced gradients and agrees across ranks by itself;
        a shard's gradient is rank-local, so its flag is all-reduced."""
        grads = self._grads(self._sharded) + self._grads(self._dense)
        if loss_scale != 1.0:
            for g in grads:
                g.mul_(1.0 / loss_scale)
        flags = [(~torch.isfinite(g)).any() for g in grads]
        if not self._sharded:  # replicated gradients agree on every rank without a collective
            return not any(bool(f) for f in flags)
        device = self._device()
        bad = torch.stack(flags).any().float().reshape(1) if flags else torch.zeros(1, device=device)
        return not bool(self.comm.all_reduce_(bad, "max").item())

    def _clip(self, max_norm: float) -> None:
        """Scale every gradient by min(1, max_norm / (total norm + 1e-6)), the total norm over all
        ranks' shards and (counted once: they are replicated) the dense parameters."""
        sharded, dense = self._grads(self._sharded), self._grads(self._dense)
        if not self._sharded and not dense:
            return
        sq = None
        if self._sharded:  # this rank's squared norm; the all-reduce adds the other shards'
            device = self._device()
            local = torch.stack([_sq(g) for g in sharded]).sum() if sharded else torch.zeros((), device=device)
            sq = self.comm.all_reduce_(local.reshape(1), "sum")
        if dense:
            dense_sq = torch.stack([_sq(g) for g in dense]).sum().reshape(1)
            sq = dense_sq if sq is None else sq + dense_sq
        factor = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0).reshape(())
        for g in sharded + dense:
            g.mul_(factor.to(g.dtype))

    def convert_loaded_state(self) -> list[str]:
        """Bring state that a checkpoint loader set in another format (another ``optim_state``)
        into this optimizer's format now rather than at the first step; one line per converted
        state, for the log."""
        lines = []
        for opt in self._optimizers:
            if isinstance(opt, RowSparseOptimizer):
                for p in [p for group in opt.param_groups for p in group["params"] if opt.state.get(p)]:
                    opt._state(p)  # converts when the format differs, else returns the state as is
                lines += opt.conversions
                opt.conversions = []
        return lines

    # -- torch.optim.Optimizer's state interface (checkpoints) -----------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self._optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        return {p: s for opt in self._optimizers for p, s in opt.state.items()}

    @state.setter
    def state(self, state: dict[torch.Tensor, dict[str, Any]]) -> None:
        for opt in self._optimizers:
            mine = {p for group in opt.param_groups for p in group["params"]}
            opt.state = defaultdict(dict, {p: s for p, s in state.items() if p in mine})

    def state_dict(self) -> dict[str, Any]:
        """One ``torch.optim.Optimizer`` state dict: parameters numbered across all groups."""
        out: dict[str, Any] = {"state": {}, "param_groups": []}
        offset = 0
        for opt in self._optimizers:
            sd = opt.state_dict()
            out["state"].update({offset + i: s for i, s in sd["state"].items()})
            out["param_groups"] += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in opt.param_groups)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        offset = 0
        groups = list(state["param_groups"])
        for opt in self._optimizers:
            count = sum(len(g["params"]) for g in opt.param_groups)
            mine = groups[:len(opt.param_groups)]
            groups = groups[len(opt.param_groups):]
            opt.load_state_dict({
                "state": {i - offset: s for i, s in state["state"].items() if offset <= i < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
            offset += count
        if groups:
            raise ValueError(f"head optimizer state has {len(state['param_groups'])} param groups, this optimizer "
                             f"{len(self.param_groups)}")


def _sq(g: torch.Tensor) -> torch.Tensor:
    """Sum of squares, at least in float32 (half-precision gradients would overflow)."""
    return g.to(torch.promote_types(g.dtype, torch.float32)).pow(2).sum()
