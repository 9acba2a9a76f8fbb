"""Checkpoints of compact class-center state: a checkpoint saved with one storage dtype loads
into another, converted, with a log line saying so; compact shards reshard exactly; the
conversion rounds the same at every world size (its noise is keyed by global row ids)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from partial_fc.comm import make_collectives
from partial_fc.optim.head_optimizer import HeadOptimizer
from tests.distributed import run_ranks

C, D = 103, 16  # uneven shards at world sizes 2 and 3


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


def _head_and_opt(state_dtype: str, optim_state: str):
    comm = make_collectives()
    head = PartialFC(C, D, margin="cosface", sample_rate=0.5, seed=7, state_dtype=state_dtype)
    opt = HeadOptimizer(sharded=[head.weight], name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, comm=comm,
                        optim_state=optim_state, seed=head.seed, row_offset=head.class_range[0])
    return head, opt


def _train_and_save(rank: int, world: int, run_dir: str, state_dtype: str, optim_state: str) -> dict:
    head, opt = _head_and_opt(state_dtype, optim_state)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        head(torch.randn(4, D, generator=g), torch.randint(0, C, (4,), generator=g)).backward()
        opt.step()
    save_checkpoint(Path(run_dir), 3, comm=make_collectives(), head=head, head_optimizer=opt,
                    trainer_state={"samples_seen": 12 * 3})
    return _snapshot(head, opt)


def _load(rank: int, world: int, run_dir: str, state_dtype: str, optim_state: str) -> dict:
    head, opt = _head_and_opt(state_dtype, optim_state)
    log = Lines()
    load_checkpoint(latest_checkpoint(Path(run_dir)), comm=make_collectives(), head=head, head_optimizer=opt,
                    logger=log)
    conversions = opt.convert_loaded_state()
    return {**_snapshot(head, opt), "log": log.lines, "conversions": conversions}


def _snapshot(head, opt) -> dict:
    return {"weight": head.weight.detach().clone(), "state": {k: v.clone() for k, v in opt.state[head.weight].items()}}


def _cat(results: list[dict], key: str | None = None) -> torch.Tensor:
    return torch.cat([r["weight"] if key is None else r["state"][key] for r in results])


@pytest.fixture(scope="module")
def fp32_at_2(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fp32")
    return run_dir, run_ranks(_train_and_save, 2, str(run_dir), "fp32", "fp32")


@pytest.fixture(scope="module")
def compact_at_2(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compact")
    return run_dir, run_ranks(_train_and_save, 2, str(run_dir), "bf16", "int8")


def test_fp32_checkpoint_loads_into_bf16_weights_and_int8_momentum(fp32_at_2):
    run_dir, saved = fp32_at_2
    loaded = [_load(0, 1, str(run_dir), "bf16", "int8")]
    weight, momentum = _cat(saved), _cat(saved, "momentum_buffer")
    assert (momentum != 0).any() and (momentum == 0).all(1).any()  # some rows sampled, some never
    ours = loaded[0]
    assert ours["weight"].dtype == torch.bfloat16 and torch.equal(ours["weight"], weight.bfloat16())  # nearest
    q, scale = ours["state"]["momentum_buffer_int8"], ours["state"]["momentum_buffer_scale"]
    assert sorted(ours["state"]) == ["momentum_buffer_int8", "momentum_buffer_scale"]
    # the int8 bound (optim/quantized.py): |q s - x| < s per element, s = absmax / 127 of its row
    assert ((q.float() * scale[:, None] - momentum).abs() < scale[:, None]).all()
    torch.testing.assert_close(scale, momentum.abs().amax(1).clamp_min(1e-30) / 127, rtol=2e-6, atol=0)
    assert "checkpoint class weights are fp32, this head stores bf16: converted (rounded to nearest)" in ours["log"]
    assert ours["conversions"] == [f"parameter of shape {(C, D)}: optimizer state converted from fp32 to "
                                   f"state_dtype='int8'"]


@pytest.mark.parametrize("world", [2, 3])
def test_conversion_rounds_the_same_at_every_world_size(fp32_at_2, world):
    run_dir, _ = fp32_at_2
    alone = _load(0, 1, str(run_dir), "bf16", "int8")
    ranks = run_ranks(_load, world, str(run_dir), "bf16", "int8")
    assert torch.equal(_cat(ranks), alone["weight"])
    for key in ("momentum_buffer_int8", "momentum_buffer_scale"):
        assert torch.equal(_cat(ranks, key), alone["state"][key]), key
    assert all(len(r["conversions"]) == 1 for r in ranks)  # every rank converts its own rows


def test_compact_checkpoint_loads_back_into_fp32_exactly(compact_at_2):
    run_dir, saved = compact_at_2
    ours = _load(0, 1, str(run_dir), "fp32", "fp32")
    q, scale = _cat(saved, "momentum_buffer_int8"), _cat(saved, "momentum_buffer_scale")
    assert ours["weight"].dtype == torch.float32 and torch.equal(ours["weight"], _cat(saved).float())
    # q and s are exact in fp32, and so is their product (8 significant bits times 24)
    assert torch.equal(ours["state"]["momentum_buffer"], q.float() * scale[:, None])
    assert "checkpoint class weights are bf16, this head stores fp32: converted (exactly)" in ours["log"]
    assert ours["conversions"] == [f"parameter of shape {(C, D)}: optimizer state converted from int8 to "
                                   f"state_dtype='fp32'"]


@pytest.mark.parametrize("world", [1, 3])
def test_compact_checkpoint_reshards_exactly(compact_at_2, world):
    run_dir, saved = compact_at_2
    loaded = [_load(0, 1, str(run_dir), "bf16", "int8")] if world == 1 else run_ranks(_load, world, str(run_dir),
                                                                                     "bf16", "int8")
    assert torch.equal(_cat(loaded), _cat(saved))
    for key in ("momentum_buffer_int8", "momentum_buffer_scale"):
        ours, theirs = _cat(loaded, key), _cat(saved, key)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), key
    assert all(r["conversions"] == [] and not any("converted" in line for line in r["log"]) for r in loaded)
