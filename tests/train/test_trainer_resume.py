"""Trainer runs that stop and resume: a learned head parameter, dropout, a finished run, and the
data counters reported where a person reads them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from partial_fc.checkpoint import latest_checkpoint
from partial_fc.checkpoint.files import safe_load
from partial_fc.config import from_dict
from partial_fc.config.train import TrainConfig
from partial_fc.train.trainer import train
from tests.tiny_run import tiny_config as config

NO_EVAL = {"pairs": []}


def _final(run: Path) -> dict:
    ckpt = latest_checkpoint(run)
    return {"path": ckpt, "trainer": safe_load(ckpt / "trainer.pt"), "head": safe_load(ckpt / "head-rank0.pt")}


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["path"].name == b["path"].name
    for key, value in a["trainer"]["engine"]["model"].items():
        torch.testing.assert_close(b["trainer"]["engine"]["model"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(b["head"]["weight"], a["head"]["weight"], rtol=0, atol=0)
    for key, value in a["head"]["module_state"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b["head"]["module_state"][key], value, rtol=0, atol=0, msg=key)


def test_a_learned_normface_scale_is_stepped_saved_and_resumed_exactly(data_dir, tmp_path):
    """The scale is a dense parameter of the head: plain SGD at the head's rate, no weight decay,
    its momentum saved beside the class rows' (position 1 of the head optimizer's state)."""
    head = {"margin": "normface", "margin_params": {"learn_scale": True, "scale": 10.0}}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(from_dict(TrainConfig, config(data_dir, straight, head=head, eval=NO_EVAL)))
    train(from_dict(TrainConfig, config(data_dir, resumed, head=head, train={"max_steps": 3}, eval=NO_EVAL)))
    train(from_dict(TrainConfig, config(data_dir, resumed, head=head, eval=NO_EVAL)))
    a, b = _final(straight), _final(resumed)
    _assert_same_run(a, b)
    scale = a["head"]["module_state"]["margin.scale_param"]
    assert float(scale) != 10.0, "the learned scale never moved"
    opt = a["head"]["optimizer"]
    assert sorted(opt["state"]) == [0, 1] and "momentum_buffer" in opt["state"][1]
    assert opt["param_groups"][1]["weight_decay"] == 0.0 and opt["param_groups"][0]["weight_decay"] > 0
    torch.testing.assert_close(b["head"]["optimizer"]["state"][1]["momentum_buffer"], opt["state"][1]["momentum_buffer"],
                               rtol=0, atol=0)


def test_resume_with_dropout_is_bit_identical(data_dir, tmp_path):
    """Dropout draws from torch's RNG, which the checkpoint restores; creating the resumed
    epoch's DataLoader iterator (it draws its base seed from the same RNG) must not put the
    masks one draw ahead of the uninterrupted run's."""
    model = {"dropout": 0.3}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(from_dict(TrainConfig, config(data_dir, straight, model=model, eval=NO_EVAL)))
    train(from_dict(TrainConfig, config(data_dir, resumed, model=model, train={"max_steps": 3}, eval=NO_EVAL)))
    train(from_dict(TrainConfig, config(data_dir, resumed, model=model, eval=NO_EVAL)))
    _assert_same_run(_final(straight), _final(resumed))


def test_resuming_a_finished_run_keeps_its_summary(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg = config(data_dir, run, train={"max_steps": 3})
    first = train(from_dict(TrainConfig, cfg))
    saved = json.loads((run / "summary.json").read_text())
    assert "eval" in saved and "loss" in saved and saved["steps"] == 3
    again = train(from_dict(TrainConfig, cfg))  # the newest checkpoint is the last step: nothing to do
    assert json.loads((run / "summary.json").read_text()) == saved
    assert again == saved and again["eval"] == json.loads(json.dumps(first["eval"]))


def _corrupt_first_jpeg(data: Path) -> None:
    """Overwrite the start of one JPEG member in place: the tar and its size stay valid, the
    image no longer decodes."""
    import tarfile

    shard = sorted(data.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    with open(shard, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * 16)


def test_data_counters_reach_the_console_and_the_summary(data_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    _corrupt_first_jpeg(data)
    run = tmp_path / "run"
    # a whole epoch (24 steps of 8): every rank's stream reads every sample of its shards once
    metrics = train(from_dict(TrainConfig, config(data, run, train={"max_steps": 24, "log_every": 24, "checkpoint_every": 24},
                                                  eval=NO_EVAL)))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("step 24/24"))
    assert " corrupt 1 read-errors 0 " in line, line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["corrupt_samples"] == metrics["corrupt_samples"] == 1 and summary["read_errors"] == 0


def test_sigterm_saves_at_the_step_boundary_exits_75_and_the_resume_is_exact(data_dir, tmp_path):
    """A real SIGTERM to a training process: it finishes the step, saves step-N, exits with the
    "preempted, resume me" code; resuming to N + 3 equals an uninterrupted run to N + 3."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from partial_fc.train.preemption import PREEMPTED_EXIT_CODE

    run = tmp_path / "run"
    long = config(data_dir, run, train={"epochs": 20, "max_steps": 2000, "log_every": 1, "checkpoint_every": 1000},
                  eval=NO_EVAL)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(long))
    # the resume and the straight run below run in this process: the same intra-op thread count
    # here, or the kernels' reductions (and so the weights) differ in the last bits
    proc = subprocess.Popen([sys.executable, "-m", "partial_fc.cli", "train", "--config", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):  # two steps done: mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, out
    stopped = int(latest_checkpoint(run).name.removeprefix("step-"))
    assert 2 <= stopped < 2000 and f"preempted (SIGTERM) at step {stopped}" in out
    train(from_dict(TrainConfig, {**long, "train": {**long["train"], "max_steps": stopped + 3}}))
    straight = tmp_path / "straight"
    train(from_dict(TrainConfig, config(data_dir, straight, train={**long["train"], "max_steps": stopped + 3}, eval=NO_EVAL)))
    _assert_same_run(_final(straight), _final(run))


def test_wall_clock_interval_saves_between_step_intervals(data_dir, tmp_path):
    import pytest

    from partial_fc.config.errors import ConfigError

    run = tmp_path / "run"
    # 1e-6 minutes: due at every step boundary; keep_last 3 leaves the three newest
    train(from_dict(TrainConfig, config(data_dir, run, train={"checkpoint_every": 1000, "checkpoint_every_minutes": 1e-6},
                                        eval=NO_EVAL)))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-5", "step-6"]
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every_minutes.*must be > 0 or null, got 0"):
        from_dict(TrainConfig, config(data_dir, run, train={"checkpoint_every_minutes": 0}))


def test_training_in_another_thread_runs_without_signal_handlers(data_dir, tmp_path):
    import threading

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        train(from_dict(TrainConfig, config(data_dir, tmp_path / "run", train={"max_steps": 2}, eval=NO_EVAL)))))
    worker.start()
    worker.join()
    assert result.get("steps") == 2
