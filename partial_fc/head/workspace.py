"""Buffers the head reuses from step to step.

A fresh multi-megabyte CPU allocation is paid for in page faults every step (glibc returns
large blocks to the OS on free); reusing the same memory keeps the step time at the cost of
the arithmetic. On CUDA the caching allocator would reuse memory anyway; the workspace is
harmless there.

A forward that keeps its last logit tile for the backward records the workspace generation;
any later use of the workspace bumps it, and the backward then recomputes the tile instead
of reading overwritten memory.
"""

from __future__ import annotations

import math

import torch


class Workspace:
    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.generation = 0

    def claim(self) -> int:
        """Start using the buffers; returns the generation that owns them until the next claim."""
        self.generation += 1
        return self.generation

    def get(self, name: str, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` backed by the buffer ``name`` (grown when needed)."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)
