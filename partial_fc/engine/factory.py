"""``build_engine(name, model, ...)``: the one entry point the trainer uses."""

from __future__ import annotations

from typing import Any

from torch import nn

from partial_fc.engine.base import BackboneEngine
from partial_fc.engine.backbone_optim import OptimizerSpec
from partial_fc.engine.stages import check_zero_stage

ENGINES = ("ddp", "deepspeed")


def build_engine(name: str, model: nn.Module, *, optimizer: OptimizerSpec | dict[str, Any],
                 precision: str = "fp32", grad_accum: int = 1, max_grad_norm: float | None = None,
                 zero_stage: int = 1, micro_batch_size: int = 1, **kwargs: Any) -> BackboneEngine:
    """Wrap ``model`` for data-parallel training.

    ``optimizer`` is an ``OptimizerSpec`` or its fields as a dict. ``zero_stage`` and
    ``micro_batch_size`` (DeepSpeed's bookkeeping only) apply to "deepspeed"; ``kwargs`` go to the
    engine (``device``, ``process_group``, ``find_unused_parameters`` for "ddp").
    """
    spec = optimizer if isinstance(optimizer, OptimizerSpec) else OptimizerSpec(**optimizer)
    common = dict(precision=precision, grad_accum=grad_accum, max_grad_norm=max_grad_norm)
    check_zero_stage(name, zero_stage)
    if name == "ddp":
        from partial_fc.engine.ddp import DDPEngine

        return DDPEngine(model, spec, **common, **kwargs)
    if name == "deepspeed":
        try:
            from partial_fc.engine.zero import DeepSpeedEngine
        except ImportError as err:  # keep the cause: a broken install is not a missing one
            raise ImportError("engine 'deepspeed' needs the deepspeed package: "
                              "pip install 'partial-fc[deepspeed]'") from err
        return DeepSpeedEngine(model, spec, **common, zero_stage=zero_stage,
                               micro_batch_size=micro_batch_size, **kwargs)
    raise ValueError(f"unknown engine {name!r}; choose from {list(ENGINES)}")
