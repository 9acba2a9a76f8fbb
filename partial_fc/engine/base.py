"""The interface the trainer drives a data-parallel backbone through.

One training micro-step, whatever the engine:

    emb = engine.forward(images)           # (b, D) float32 embeddings of this rank's samples
    loss = head(emb, labels)               # the head is outside the engine
    engine.backward(loss)                  # loss / grad_accum, times the fp16 loss scale
    applied = engine.step()                # at a boundary: clip to max_grad_norm, step, zero grad

``backward`` multiplies the loss by ``loss_scale / grad_accum`` before back-propagating, so any
parameter outside the engine that the loss reaches (the head's class centers) receives gradients
multiplied by the same factor: the head's optimizer divides those by ``loss_scale`` (read before
``step()``, which may change it; the 1/grad_accum is the wanted mean over micro-batches) and
skips its step when ``step()`` returns False (``partial_fc.optim.head_optimizer``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "fp16", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return precision


def check_grad_accum(grad_accum: int) -> int:
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be an integer >= 1, got {grad_accum!r}")
    return grad_accum


class BackboneEngine(ABC):
    """A backbone, its optimizer and its data-parallel wrapper.

    ``micro_step`` counts backward calls; the micro-step that completes a group of ``grad_accum``
    is a boundary, where gradients are synchronised across ranks and ``step()`` updates.
    """

    grad_accum: int = 1
    micro_step: int = 0
    #: pre-clip total gradient norm of the last boundary where clipping ran, else None
    grad_norm: float | None = None

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The bare backbone (no DDP/DeepSpeed wrapper), for evaluation and export."""

    @property
    def is_boundary(self) -> bool:
        """Whether the current micro-step (the one whose forward/backward runs now) ends a group."""
        return (self.micro_step + 1) % self.grad_accum == 0

    @property
    def loss_scale(self) -> float:
        """The fp16 loss scale ``backward`` applies (1.0 without fp16)."""
        return 1.0

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Embeddings (b, D), float32, of this rank's images (b, 3, H, W)."""

    def __call__(self, images: Tensor) -> Tensor:
        return self.forward(images)

    @abstractmethod
    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss * loss_scale / grad_accum``; syncs gradients only at a boundary."""

    @abstractmethod
    def step(self) -> bool:
        """Advance one micro-step. At a boundary: optimizer step and zero grad. Returns True when
        the parameters were updated (False between boundaries or when fp16 overflow skipped it)."""

    @abstractmethod
    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the accumulated gradients to total norm ``max_norm``; returns the norm before."""

    @abstractmethod
    def set_lr(self, lr: float) -> None:
        """Learning rate of every parameter group (the schedule lives in the trainer)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Model and optimizer state as plain tensors, numbers and dicts (torch.load(weights_only=True))."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def train(self, mode: bool = True) -> BackboneEngine:
        self.module.train(mode)
        return self

    def eval(self) -> BackboneEngine:
        return self.train(False)

    def parameters(self):
        return self.module.parameters()


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
