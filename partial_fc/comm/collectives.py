"""The few collectives the head needs, behind one small interface.

The head's math receives a ``Collectives`` object and never looks up a process group itself;
``SingleProcess`` makes every call the identity, so the same code runs with no process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor-in/tensor-out collectives; keep working on older releases.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class Collectives:
    """Interface. All tensors are split or concatenated along dim 0; equal sizes on every rank."""

    rank: int = 0
    world_size: int = 1

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(n, ...) on each rank -> (world_size * n, ...), rank r's block at [r n, (r+1) n)."""
        raise NotImplementedError

    def all_reduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """In-place sum or max over ranks; returns ``tensor``."""
        raise NotImplementedError

    def reduce_scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        """(world_size * n, ...) on each rank -> this rank's (n, ...) block of the sum over ranks."""
        raise NotImplementedError


class SingleProcess(Collectives):
    def all_gather(self, tensor):
        return tensor

    def all_reduce_(self, tensor, op):
        _check_op(op)
        return tensor

    def reduce_scatter(self, tensor):
        return tensor


class ProcessGroupCollectives(Collectives):
    """torch.distributed on ``group`` (None: the default group). Works with NCCL and gloo;
    gloo has no reduce-scatter, so there it is an all-reduce followed by a slice."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise ValueError("ProcessGroupCollectives needs an initialised torch.distributed process group")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._gloo = dist.get_backend(group) == "gloo"

    def all_gather(self, tensor):
        tensor = tensor.contiguous()
        out = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_tensor(out, tensor, group=self.group)
        return out

    def all_reduce_(self, tensor, op):
        dist.all_reduce(tensor, op=_check_op(op), group=self.group)
        return tensor

    def reduce_scatter(self, tensor):
        tensor = tensor.contiguous()
        n = tensor.shape[0] // self.world_size
        if self._gloo:
            dist.all_reduce(tensor, group=self.group)
            return tensor[self.rank * n : (self.rank + 1) * n].clone()
        out = tensor.new_empty((n, *tensor.shape[1:]))
        _reduce_scatter_tensor(out, tensor, group=self.group)
        return out


def _check_op(op: str) -> dist.ReduceOp:
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"unknown reduce op {op!r}; choose from {sorted(ops)}")
    return ops[op]


def make_collectives(group: dist.ProcessGroup | None = None) -> Collectives:
    """Collectives over ``group``; with no initialised process group, the single-process identity."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        return SingleProcess()
    return ProcessGroupCollectives(group)
