"""torch DistributedDataParallel around the backbone (plain module at world size 1)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from partial_fc.engine.base import BackboneEngine, autocast_dtype, check_grad_accum, check_precision
from partial_fc.engine.backbone_optim import OptimizerSpec, make_optimizer


class DDPEngine(BackboneEngine):
    """DDP averages the backbone gradients over the ranks, so the head's default
    ``backbone_grad_average=True`` (embedding gradient times N) gives the single-process update.

    Precision: "fp32"; "bf16" = autocast, no scaler; "fp16" = autocast + ``torch.amp.GradScaler``.
    The scaler's inf/nan check agrees on every rank without an extra collective: it inspects the
    gradients after DDP's all-reduce at the boundary, which are identical on all ranks (an inf on
    one rank becomes an inf/nan in the sum everywhere), so every rank skips or steps together.
    Parameters outside DDP (the head) are not covered by that check: see ``base``.

    Gradient accumulation: forward and backward of non-boundary micro-steps run under
    ``no_sync()``; the boundary backward all-reduces the accumulated gradients once.
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerSpec, *, precision: str = "fp32",
                 grad_accum: int = 1, max_grad_norm: float | None = None,
                 device: torch.device | str | None = None,
                 process_group: dist.ProcessGroup | None = None,
                 find_unused_parameters: bool = False) -> None:
        self.precision = check_precision(precision)
        self.grad_accum = check_grad_accum(grad_accum)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._module = model.to(self.device)
        world_size = dist.get_world_size(process_group) if dist.is_available() and dist.is_initialized() else 1
        self._ddp: DistributedDataParallel | None = None
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(model, device_ids=ids, process_group=process_group,
                                                find_unused_parameters=find_unused_parameters)
        self.optimizer = make_optimizer(optimizer, model)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self.micro_step = 0
        self._unscaled = False  # GradScaler.unscale_ ran for the pending step

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler is not None else 1.0

    def _sync_context(self):
        if self._ddp is None or self.is_boundary:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def forward(self, images: Tensor) -> Tensor:
        dtype = autocast_dtype(self.precision)
        cast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
        with self._sync_context(), cast:
            out = (self._ddp or self._module)(images.to(self.device, non_blocking=True))
        return out.float()

    def backward(self, loss: Tensor) -> None:
        loss = loss / self.grad_accum  # mean over micro-batches, as DeepSpeed does
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        with self._sync_context():
            loss.backward()

    def clip_grad_norm(self, max_norm: float) -> float:
        self._clip(max_norm)
        return self.grad_norm

    def _clip(self, max_norm: float) -> None:
        if not self.is_boundary:
            raise ValueError("clip_grad_norm between accumulation boundaries would clip unsynchronised "
                             "gradients; call it when engine.is_boundary is True")
        if self.scaler is not None and not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True
        # kept as a tensor: read (and synchronised) only when someone logs it, not every step
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self._module.parameters(), max_norm)

    @property
    def grad_norm(self) -> float | None:
        norm = getattr(self, "_grad_norm", None)
        return None if norm is None else float(norm)

    def step(self) -> bool:
        boundary = self.is_boundary
        if not boundary:
            self.micro_step += 1
            return False
        if self.max_grad_norm is not None and not self._unscaled:
            self._clip(self.max_grad_norm)
        self.micro_step += 1
        if self.scaler is None:
            self.optimizer.step()
            applied = True
        else:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= before  # update() backs off only after a skipped step
        self.optimizer.zero_grad(set_to_none=True)
        self._unscaled = False
        return applied

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"model": self._module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "micro_step": self.micro_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))
