"""DDPEngine: one data-parallel update equals single-process training on the global batch."""

from __future__ import annotations

import pytest
import torch

from partial_fc.engine import DDPEngine, OptimizerSpec, build_engine
from tests.distributed import run_ranks
from tests.engine.steps import assert_same, backbone, reference, round_trip, train

SGD = OptimizerSpec("sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4)  # small: the BN-free net diverges at 1e-2


@pytest.mark.parametrize("world_size,grad_accum", [(1, 1), (2, 1), (2, 2)])
def test_ddp_steps_equal_single_process(world_size, grad_accum):
    kw = {"grad_accum": grad_accum}
    results = run_ranks(train, world_size, "ddp", SGD, kw) if world_size > 1 else [train(0, 1, "ddp", SGD, kw)]
    expected = reference(SGD)
    for r in results:
        assert_same(r, expected)
    initial = backbone().state_dict()
    assert all(not torch.equal(expected[k], initial[k]) for k in initial)  # every parameter moved


def test_ddp_state_dict_round_trip():
    out = round_trip(0, 1, "ddp", SGD, {})
    for key, value in out["original"].items():
        torch.testing.assert_close(out["restored"][key], value, rtol=0, atol=0)  # same ops, same order


def test_bf16_and_fp16_run_and_report_steps():
    for precision in ("bf16", "fp16"):
        engine = build_engine("ddp", backbone(), optimizer=SGD, precision=precision, max_grad_norm=1.0)
        images = torch.randn(2, 3, 32, 32)
        for _ in range(30):  # fp16: GradScaler starts at 2^16 and skips steps until it fits
            before = {k: v.clone() for k, v in engine.module.state_dict().items()}
            scale = engine.loss_scale
            emb = engine.forward(images)
            assert emb.dtype == torch.float32
            engine.backward(emb.square().mean())
            if engine.step():
                break
            assert precision == "fp16" and engine.loss_scale < scale  # a skip backs the scale off ...
            assert_same(engine.module.state_dict(), before)  # ... and leaves the parameters alone
        else:
            pytest.fail(f"{precision}: no optimizer step applied in 30 tries")
        assert engine.grad_norm is not None and engine.grad_norm > 0
        assert (engine.loss_scale > 1.0) == (precision == "fp16")


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown engine 'horovod'; choose from \['ddp', 'deepspeed'\]"):
        build_engine("horovod", backbone(), optimizer=SGD)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        DDPEngine(backbone(), SGD, precision="fp8")
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        OptimizerSpec("lamb")
    with pytest.raises(ValueError, match="grad_accum must be"):
        build_engine("ddp", backbone(), optimizer={"lr": 0.1}, grad_accum=0)
    engine = build_engine("ddp", backbone(), optimizer=SGD, grad_accum=2)
    with pytest.raises(ValueError, match="is_boundary"):
        engine.clip_grad_norm(1.0)
