"""Block buffers reused from step to step by the row-sparse optimizers."""

from __future__ import annotations

import torch


class Scratch:
    """Named buffers, grown on demand and never shrunk (fresh CPU memory costs page faults)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[object, torch.dtype, torch.device], torch.Tensor] = {}

    def buffer(self, slot: object, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        key = (slot, dtype, device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

    def get(self, slot: object, like: torch.Tensor) -> torch.Tensor:
        return self.buffer(slot, tuple(like.shape), like.dtype, like.device)
