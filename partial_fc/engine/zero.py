"""DeepSpeed ZeRO stage 1/2 around the backbone. The only module of the project that imports deepspeed.

Gradient scale: DeepSpeed, like DDP, *averages* the backbone gradients over the data-parallel
ranks (and ``backward`` divides the loss by ``gradient_accumulation_steps``). The head's
all-gather backward already sums the embedding gradient over ranks, so PartialFC's default
``backbone_grad_average=True`` (multiply by N, compensating the average) applies unchanged and
the update equals single-process SGD/AdamW on the global batch (tests/engine).

Precision: DeepSpeed's own fp16 (dynamic loss scale) or bf16 modes, which keep the module's
parameters in 16 bits (the embedding layer included) and fp32 master weights in the optimizer;
inputs are cast to the module's dtype and embeddings returned in float32.
"""

from __future__ import annotations

import math
from typing import Any

import deepspeed
import torch
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,
                             safe_set_full_fp32_param, safe_set_full_optimizer_state)
from torch import Tensor, nn

from partial_fc.engine.base import BackboneEngine, check_grad_accum, check_precision
from partial_fc.engine.backbone_optim import OptimizerSpec, make_optimizer
from partial_fc.engine.stages import check_zero_stage



def deepspeed_config(*, zero_stage: int, precision: str, grad_accum: int, max_grad_norm: float | None,
                     micro_batch_size: int) -> dict[str, Any]:
    """Our settings as a DeepSpeed config dict. The optimizer is ours (a torch optimizer),
    hence ``zero_allow_untested_optimizer``."""
    check_zero_stage("deepspeed", zero_stage)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,  # bookkeeping only: we feed the data
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(max_grad_norm or 0.0),    # 0 disables
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine(BackboneEngine):
    """``deepspeed.initialize`` on the backbone with a torch optimizer built from ``OptimizerSpec``.

    Needs an initialised default process group (``partial_fc.comm.process_group.init_distributed``);
    DeepSpeed reuses it. ``state_dict``/``load_state_dict`` are collective (every rank calls them).
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerSpec, *, precision: str = "fp32",
                 grad_accum: int = 1, max_grad_norm: float | None = None, zero_stage: int = 1,
                 micro_batch_size: int = 1) -> None:
        self.precision = check_precision(precision)
        self.grad_accum = check_grad_accum(grad_accum)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        self.spec = optimizer
        self.config = deepspeed_config(zero_stage=zero_stage, precision=precision, grad_accum=grad_accum,
                                       max_grad_norm=max_grad_norm, micro_batch_size=micro_batch_size)
        self._ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(optimizer, model), config=self.config)
        self.micro_step = 0

    @property
    def module(self) -> nn.Module:
        return self._ds.module

    @property
    def loss_scale(self) -> float:
        if self.precision != "fp16":
            return 1.0
        return float(self.optimizer.loss_scale)

    def forward(self, images: Tensor) -> Tensor:
        dtype = next(self.module.parameters()).dtype
        images = images.to(self._ds.device, dtype=dtype if images.is_floating_point() else images.dtype)
        return self._ds(images).float()

    def backward(self, loss: Tensor) -> None:
        self._ds.backward(loss)  # scales by loss_scale / gradient_accumulation_steps

    def clip_grad_norm(self, max_norm: float) -> float:
        """DeepSpeed clips inside ``step()`` with the configured ``gradient_clipping``; this only
        checks that ``max_norm`` is that value and returns NaN (the norm is known after ``step()``:
        read ``grad_norm``)."""
        if self.max_grad_norm is None or not math.isclose(max_norm, self.max_grad_norm):
            raise ValueError(f"DeepSpeed clips inside step(): build the engine with max_grad_norm={max_norm} "
                             f"(now {self.max_grad_norm}) instead of calling clip_grad_norm")
        return math.nan

    def step(self) -> bool:
        boundary = self.is_boundary
        self._ds.step()  # DeepSpeed counts micro-steps itself and updates only at its boundary
        self.micro_step += 1
        if not boundary:
            return False
        if self.max_grad_norm is not None:
            norm = self._ds.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)
        return bool(self._ds.was_step_applied())

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- state: full (unpartitioned) fp32 tensors per parameter name, independent of world size --

    def _state_keys(self) -> list[str]:
        if self.spec.name == "adamw":
            return ["exp_avg", "exp_avg_sq"]
        return ["momentum_buffer"] if self.spec.momentum > 0 else []

    def _base_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        # DeepSpeed manages only trainable parameters; frozen ones (e.g. IResNet's fixed feature-BN
        # weight) live in the module's state dict alone.
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        params = self._trainable()
        model = {k: v.detach().clone() for k, v in self.module.state_dict().items()}  # buffers too
        for name, p in params.items():
            model[name] = safe_get_full_fp32_param(p).detach().clone()
        base = self._base_optimizer()
        started = any(len(s) for s in base.state.values())
        opt_state = {name: {key: safe_get_full_optimizer_state(p, key).detach().clone()
                            for key in self._state_keys()} for name, p in params.items()} if started else {}
        steps = [float(s["step"]) for s in base.state.values() if "step" in s]
        return {"model": model, "optimizer": {"state": opt_state, "step": steps[0] if steps else 0.0,
                                              "lr": [g["lr"] for g in self.optimizer.param_groups]},
                "loss_scale": self.loss_scale, "micro_step": self.micro_step,
                "global_steps": int(self._ds.global_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self._trainable()
        self.module.load_state_dict(state["model"], strict=True)  # 16-bit copies and buffers
        for name, p in params.items():
            safe_set_full_fp32_param(p, state["model"][name].to(p.device, torch.float32))
        opt = state["optimizer"]
        if opt["state"]:
            self._init_base_state(opt["step"])
            for name, p in params.items():
                for key, value in opt["state"][name].items():
                    safe_set_full_optimizer_state(p, value.to(p.device, torch.float32), key)
        for group, lr in zip(self.optimizer.param_groups, opt["lr"]):
            group["lr"] = lr
        if self.precision == "fp16" and hasattr(self.optimizer, "loss_scaler"):
            self.optimizer.loss_scaler.cur_scale = float(state["loss_scale"])
        self.micro_step = int(state["micro_step"])
        self._ds.global_steps = int(state["global_steps"])
        self._ds.micro_steps = self.micro_step

    def _init_base_state(self, step: float) -> None:
        """torch optimizers create their state on the first step; create it now so it can be set."""
        base = self._base_optimizer()
        for group in base.param_groups:
            for flat in group["params"]:
                s = base.state[flat]
                for key in self._state_keys():
                    s.setdefault(key, torch.zeros_like(flat))
                if self.spec.name == "adamw":
                    s["step"] = torch.tensor(step)
        # DeepSpeed links each parameter to its slice of the optimizer state only after the first
        # step (private API, deepspeed 0.19): link the state just created so safe_set_* can reach it.
        if hasattr(self.optimizer, "_lazy_init_hp_params_optimizer_state"):
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()
