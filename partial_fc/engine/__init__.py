"""Data-parallel backbone engines. The only package that imports deepspeed (lazily, on demand)."""

from partial_fc.engine.base import PRECISIONS, BackboneEngine
from partial_fc.engine.ddp import DDPEngine
from partial_fc.engine.factory import ENGINES, build_engine
from partial_fc.engine.backbone_optim import OPTIMIZERS, OptimizerSpec

__all__ = ["BackboneEngine", "DDPEngine", "DeepSpeedEngine", "ENGINES", "OPTIMIZERS", "OptimizerSpec",
           "PRECISIONS", "build_engine"]


def __getattr__(name: str):
    if name == "DeepSpeedEngine":  # importing deepspeed takes seconds and is optional
        from partial_fc.engine.zero import DeepSpeedEngine

        return DeepSpeedEngine
    raise AttributeError(f"module 'partial_fc.engine' has no attribute {name!r}")
