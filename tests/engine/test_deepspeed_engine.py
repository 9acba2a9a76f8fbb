"""DeepSpeedEngine (ZeRO-1/2, CPU + gloo): one data-parallel update equals single-process training
on the global batch, and the state survives torch.load(weights_only=True) at any world size."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from partial_fc.engine import OptimizerSpec, build_engine
from tests.distributed import run_ranks
from tests.engine.steps import assert_same, backbone, reference, round_trip, train

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed not installed (pip install 'partial-fc[deepspeed]')")

SGD = OptimizerSpec("sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4)
ADAMW = OptimizerSpec("adamw", lr=1e-3, weight_decay=0.05)


@pytest.mark.parametrize("zero_stage,spec,grad_accum", [(1, SGD, 1), (2, SGD, 1), (2, ADAMW, 2)],
                         ids=["zero1-sgd", "zero2-sgd", "zero2-adamw-accum2"])
def test_deepspeed_steps_equal_single_process(zero_stage, spec, grad_accum):
    kw = {"zero_stage": zero_stage, "grad_accum": grad_accum}
    for r in run_ranks(train, 2, "deepspeed", spec, kw):
        assert_same(r, reference(spec))


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_deepspeed_state_dict_round_trip(zero_stage):
    for r in run_ranks(round_trip, 2, "deepspeed", SGD, {"zero_stage": zero_stage}):
        assert_same(r["restored"], r["original"])


def test_deepspeed_config_errors():
    from partial_fc.engine.zero import deepspeed_config

    with pytest.raises(ValueError, match="zero_stage must be one of"):
        deepspeed_config(zero_stage=3, precision="fp32", grad_accum=1, max_grad_norm=None, micro_batch_size=1)
    with pytest.raises(ValueError, match="needs engine 'deepspeed'"):
        build_engine("ddp", backbone(), optimizer=SGD, zero_stage=2)
    config = deepspeed_config(zero_stage=2, precision="bf16", grad_accum=4, max_grad_norm=5.0, micro_batch_size=64)
    assert config["zero_allow_untested_optimizer"] and config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert (config["gradient_accumulation_steps"], config["gradient_clipping"]) == (4, 5.0)
