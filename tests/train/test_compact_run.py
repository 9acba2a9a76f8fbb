"""The trainer with compact class-center state (``head.state_dtype`` bf16, ``head.optim_state``
int8): it trains, resumes bit for bit, reshards over real torchrun ranks, and resumes a
checkpoint of another state dtype with a log line saying it converted."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from partial_fc.checkpoint import latest_checkpoint
from partial_fc.checkpoint.files import safe_load
from partial_fc.comm import make_collectives
from partial_fc.config import from_dict
from partial_fc.config.errors import ConfigError
from partial_fc.config.train import TrainConfig
from partial_fc.train.criterion import build_criterion, build_head_optimizer
from partial_fc.train.memory_check import config_fixes, head_plan
from partial_fc.train.trainer import train
from tests.distributed import run_ranks
from tests.tiny_run import tiny_config, torchrun_train as _torchrun

COMPACT = {"state_dtype": "bf16", "optim_state": "int8"}
EPOCH_STEPS = 24  # 192 tiny images, batch 8, one rank


def _config(data_dir: Path, run: Path, head: dict | None = None, **train) -> dict:
    return tiny_config(data_dir, run, eval={"pairs": []}, head=head or {}, train=train)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _head_file(run: Path, rank: int = 0) -> dict:
    return safe_load(latest_checkpoint(run) / f"head-rank{rank}.pt")


def _momentum(payload: dict) -> dict[str, torch.Tensor]:
    opt = payload["optimizer"]
    return opt["state"][opt["weight_index"]]


def test_compact_state_trains_like_fp32(data_dir, tmp_path):
    """4 epochs of 24 steps. Measured here: per-epoch mean loss 10.8 -> 7.9 (bf16 + int8) and
    10.9 -> 7.8 (fp32); the bounds leave room for the batch noise of 8-sample steps."""
    means = {}
    for name, head in (("compact", COMPACT), ("fp32", {})):
        run = tmp_path / name
        train(from_dict(TrainConfig, _config(data_dir, run, head, epochs=4, max_steps=None, log_every=1,
                                             checkpoint_every=1000)))
        losses = _losses(run)
        assert len(losses) == 4 * EPOCH_STEPS
        means[name] = [statistics.mean(losses[i:i + EPOCH_STEPS]) for i in range(0, len(losses), EPOCH_STEPS)]
    first, last = means["compact"][0], means["compact"][-1]
    assert last < first - 1.5, means
    assert abs(last - means["fp32"][-1]) < 0.5, means  # the compact run is not worse by more than batch noise
    saved = _head_file(tmp_path / "compact")
    assert saved["weight"].dtype == torch.bfloat16
    state = _momentum(saved)
    assert state["momentum_buffer_int8"].dtype == torch.int8 and state["momentum_buffer_scale"].dtype == torch.float32
    assert "momentum_buffer" not in state


def test_compact_resume_is_exact_at_the_same_world_size(data_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(from_dict(TrainConfig, _config(data_dir, straight, COMPACT)))
    train(from_dict(TrainConfig, _config(data_dir, resumed, COMPACT, max_steps=3)))
    train(from_dict(TrainConfig, _config(data_dir, resumed, COMPACT)))  # picks up step-3, runs to 6
    a, b = _head_file(straight), _head_file(resumed)
    assert latest_checkpoint(resumed).name == "step-6"
    assert a["weight"].dtype == torch.bfloat16 and torch.equal(a["weight"], b["weight"])
    for key, value in _momentum(a).items():
        assert torch.equal(_momentum(b)[key], value), key
    assert a["optimizer"]["param_groups"][0]["noise_step"] == b["optimizer"]["param_groups"][0]["noise_step"] == 6


def test_checkpoint_of_another_state_dtype_resumes_converted_with_a_log_line(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(from_dict(TrainConfig, _config(data_dir, run, max_steps=3)))  # fp32 weights and momentum
    fp32 = _head_file(run)
    capsys.readouterr()
    train(from_dict(TrainConfig, _config(data_dir, run, COMPACT, max_steps=4)))
    out = capsys.readouterr().out
    assert "checkpoint class weights are fp32, this head stores bf16: converted (rounded to nearest)" in out
    assert "optimizer state converted from fp32 to state_dtype='int8'" in out
    compact = _head_file(run)
    assert compact["weight"].dtype == torch.bfloat16 and fp32["weight"].dtype == torch.float32
    # and back: the compact checkpoint resumes into an fp32 head exactly (bf16 and int8 x scale are fp32 values)
    capsys.readouterr()
    train(from_dict(TrainConfig, _config(data_dir, run, max_steps=5)))
    out = capsys.readouterr().out
    assert "checkpoint class weights are bf16, this head stores fp32: converted (exactly)" in out
    assert "optimizer state converted from int8 to state_dtype='fp32'" in out
    assert _head_file(run)["weight"].dtype == torch.float32


def test_compact_run_on_two_ranks_reshards_to_three_and_to_one(data_dir, tmp_path):
    first = tmp_path / "first"
    out = _torchrun(2, _config(data_dir, first, COMPACT, max_steps=4, checkpoint_every=4), tmp_path, "two")
    assert "2 rank(s)" in out and "step 4/4" in out
    saved = torch.cat([_head_file(first, r)["weight"] for r in range(2)])
    for world in (3, 1):
        run = tmp_path / f"on{world}"
        shutil.copytree(first / "checkpoints", run / "checkpoints")
        out = _torchrun(world, _config(data_dir, run, COMPACT, max_steps=6, checkpoint_every=4), tmp_path, f"on{world}")
        assert "resharded from world size 2" in out and "step 6/6" in out, out
        assert "converted" not in out  # the same formats: rows are copied, not converted
        files = [_head_file(run, r) for r in range(world)]
        assert all(f["weight"].dtype == torch.bfloat16 and "momentum_buffer_int8" in _momentum(f) for f in files)
        weight = torch.cat([f["weight"] for f in files])
        assert weight.shape == saved.shape and not torch.equal(weight, saved)  # trained on from the resharded rows
        assert _losses(run) and all(math.isfinite(v) for v in _losses(run))


def test_config_checks_and_the_planner_sees_the_state_dtypes(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"head\.state_dtype must be one of \['fp32', 'bf16', 'fp16'\], got 'int8'"):
        from_dict(TrainConfig, _config(data_dir, tmp_path, {"state_dtype": "int8"}))
    with pytest.raises(ConfigError, match=r"head\.optim_state must be one of \['fp32', 'bf16', 'int8'\], got 'fp16'"):
        from_dict(TrainConfig, _config(data_dir, tmp_path, {"optim_state": "fp16"}))
    agents = _config(data_dir, tmp_path, {"state_dtype": "bf16"})
    agents["loss"] = {"name": "c_contrastive"}
    with pytest.raises(ConfigError, match=r"head\.state_dtype is 'bf16' but loss\.name c_contrastive keeps its agents"):
        from_dict(TrainConfig, agents)
    cfg = from_dict(TrainConfig, _config(data_dir, tmp_path, COMPACT))
    plan = head_plan(cfg, num_classes=1_000_000, world_size=2, device=torch.device("cpu"))
    wide = head_plan(from_dict(TrainConfig, _config(data_dir, tmp_path)), num_classes=1_000_000, world_size=2,
                     device=torch.device("cpu"))
    assert (plan.state_dtype, plan.optim_state) == ("bf16", "int8")
    assert plan.total_bytes < wide.total_bytes
    # 10M classes on one rank, a budget the fp32 head misses by 20 % (its rows and momentum are 3/4
    # of its plan): the compact keys are offered as the fix, by their config names
    fp32 = from_dict(TrainConfig, _config(data_dir, tmp_path))
    big = head_plan(fp32, num_classes=10_000_000, world_size=1, device=torch.device("cpu"))
    fixes = config_fixes(big, int(big.total_bytes * 0.8), cfg=fp32)
    assert "head.state_dtype=bf16 with head.optim_state=int8" in fixes, fixes


def _built_rounding_key(rank: int, world: int, cfg: dict) -> tuple:
    config = from_dict(TrainConfig, cfg)
    head = build_criterion(config, num_classes=25, device=torch.device("cpu"))
    opt = build_head_optimizer(config, head, lr=0.1, comm=make_collectives())._optimizers[0]
    return head.class_range, head.weight.dtype, opt.state_dtype, opt.seed, opt.row_offset


def test_the_head_optimizer_rounds_with_the_global_row_ids(data_dir, tmp_path):
    """Sub-center ArcFace (3 rows per class) on 3 ranks: the optimizer's row offset is the global
    id of the shard's first row, and its seed the head's (the run's) seed."""
    cfg = _config(data_dir, tmp_path, {**COMPACT, "margin": "subcenter_arcface", "margin_params": {"subcenters": 3}})
    built = run_ranks(_built_rounding_key, 3, cfg)
    assert [b[0] for b in built] == [(0, 9), (9, 17), (17, 25)]
    assert all(b[1:4] == (torch.bfloat16, "int8", 3) for b in built)  # tiny_config's seed is 3
    assert [b[4] for b in built] == [0, 27, 51]
