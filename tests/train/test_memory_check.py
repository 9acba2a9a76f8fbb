"""The trainer refuses, before allocating anything, a head the capacity planner says will not fit
this machine's free memory, and names the fix as config keys."""

from __future__ import annotations

import resource
import time

import pytest

from partial_fc.config import from_dict
from partial_fc.config.train import TrainConfig
from partial_fc.plan import plan_memory
from partial_fc.train.memory_check import free_bytes, refusal
from partial_fc.train.trainer import train
from tests.tiny_run import tiny_config

NO_EVAL = {"pairs": []}


def test_a_head_that_cannot_fit_is_refused_at_once_naming_the_fix(data_dir, tmp_path):
    import torch

    available = free_bytes(torch.device("cpu"))
    assert available, "no MemAvailable in /proc/meminfo"
    # fp32 rows and momentum of D = 32: 256 bytes a class; four times the free memory. Eight
    # ranks would hold an eighth each, about 0.6 of it with the step's gradient rows.
    classes = 4 * available // 256
    run = tmp_path / "run"
    cfg = from_dict(TrainConfig, tiny_config(data_dir, run, head={"num_classes": classes}, eval=NO_EVAL))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with pytest.raises(ValueError) as refused:
        train(cfg)
    elapsed = time.perf_counter() - start
    message = str(refused.value)
    # Allocating (and initialising) four times the free memory would take the OOM killer or
    # minutes of swapping. The bound is loose on purpose: the first planner call of a process
    # builds an optimizer on the meta device, which imports torch._dynamo (3-10 s under load);
    # the peak RSS is the sharper proof that no table was allocated.
    assert elapsed < 30, f"refused after {elapsed:.2f} s"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert grown < (1 << 30), f"the peak RSS grew by {grown / 2**20:.0f} MiB before the refusal"
    assert "\n" not in message and f"for {classes:,} classes" in message, message
    assert "weights" in message and "optimizer state" in message and "free; would fit with: " in message, message
    assert "8 ranks (more GPUs or nodes)" in message and "train.check_memory=false" in message, message
    assert "--" not in message, "planner flags, not config keys"
    assert not run.exists(), "the run directory was made: the check came after setup began"


def test_the_fixes_are_config_keys():
    """A plan whose gradient rows and logit tile, not its table, overflow the budget: sampling
    fewer classes, a smaller batch or smaller tiles fit (the budget sits between the plans)."""
    cfg = from_dict(TrainConfig, {"head": {"sample_rate": 1.0}, "data": {"batch_size": 512}})
    options = dict(classes=1_000_000, dim=512, world_size=1, batch_size=512, sample_rate=1.0, device="cuda")
    plan = plan_memory(**options)
    budget = plan_memory(**{**options, "sample_rate": 0.1}).total_bytes + 1
    message = refusal(plan, budget, where="rank 0 (cuda)", cfg=cfg)
    assert "would fit with: " in message and "head.sample_rate=0.1" in message, message
    assert "--" not in message and "sample-rate" not in message, message
    # bf16 centers + int8 momentum (5.5 GiB here) do not fit this budget (5.3 GiB), so they are not
    # offered; with a budget they fit, they are, by their config keys
    assert "head.state_dtype" not in message, message
    compact = plan_memory(**{**options, "state_dtype": "bf16", "optim_state": "int8"}).total_bytes
    message = refusal(plan, compact + 1, where="rank 0 (cuda)", cfg=cfg)
    assert "head.state_dtype=bf16 with head.optim_state=int8" in message, message


def test_a_loss_that_scores_every_agent_is_not_told_to_sample():
    cfg = from_dict(TrainConfig, {"loss": {"name": "c_triplet"}, "head": {"num_classes": 1_000_000}})
    plan = plan_memory(classes=1_000_000, dim=512, world_size=1, batch_size=128, device="cuda")
    message = refusal(plan, plan.total_bytes // 3, where="rank 0 (cuda)", cfg=cfg)
    assert "head.sample_rate" not in message and "ranks (more GPUs or nodes)" in message, message


def test_a_tiny_run_is_checked_and_not_refused_and_the_check_can_be_switched_off(data_dir, tmp_path, capsys):
    metrics = train(from_dict(TrainConfig, tiny_config(data_dir, tmp_path / "a", train={"max_steps": 1}, eval=NO_EVAL)))
    assert metrics["steps"] == 1
    out = capsys.readouterr().out
    assert "head memory: " in out and " per rank planned, " in out and " free on rank 0 (cpu" in out, out
    train(from_dict(TrainConfig, tiny_config(data_dir, tmp_path / "b", train={"max_steps": 1, "check_memory": False},
                                             eval=NO_EVAL)))
    assert "head memory: " not in capsys.readouterr().out


def test_every_rank_refuses_together_under_torchrun(data_dir, tmp_path):
    """The ranks gather their budgets and check the smallest: both say the same line and exit,
    none is left waiting in a collective for the other."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import torch
    import yaml

    classes = 8 * free_bytes(torch.device("cpu")) // 256  # each of 2 ranks: 2x its share of the host
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(data_dir, tmp_path / "run", head={"num_classes": classes}, eval=NO_EVAL)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "partial_fc.cli", "train",
                           "--config", str(cfg_path)], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    # two processes write to one pipe: their lines may run into each other
    lines = re.findall(r"partial-fc train: error: (the head needs .*? to skip this check)", out)
    assert len(lines) == 2 and lines[0] == lines[1], out
    assert f"for {classes:,} classes" in lines[0] and "(cpu, its share of the host)" in lines[0], lines[0]
