"""The trainer end to end on a tiny synthetic data set: real shards, real JPEG decoding, real
process groups (torchrun), real checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from partial_fc.comm.local import free_port
from partial_fc.config import from_dict, load_yaml
from partial_fc.config.train import TrainConfig
from partial_fc.checkpoint import latest_checkpoint
from partial_fc.checkpoint.files import safe_load
from partial_fc.train.trainer import plan, train
from tests.tiny_run import tiny_config as config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def final_state(run_dir: Path) -> dict:
    ckpt = latest_checkpoint(run_dir)
    return {"trainer": safe_load(ckpt / "trainer.pt"), "head": safe_load(ckpt / "head-rank0.pt"), "path": ckpt}


def test_single_process_run_writes_config_metrics_checkpoints_and_evaluates(data_dir, tmp_path):
    run = tmp_path / "run"
    metrics = train(from_dict(TrainConfig, config(data_dir, run)))
    assert metrics["steps"] == 6 and "synthetic-heldout" in metrics["eval"]
    assert load_yaml(run / "config.yaml", TrainConfig).run_dir == str(run)  # resolved config round-trips
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in lines if "eval/synthetic-heldout/accuracy" in r] == [0, 3, 6]  # before training too
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in lines if "loss" in r)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-6"]
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["eval"]["synthetic-heldout"]["accuracy"] <= 1.0


def test_resume_is_exact_at_the_same_world_size(data_dir, tmp_path):
    straight = tmp_path / "straight"
    train(from_dict(TrainConfig, config(data_dir, straight)))
    resumed = tmp_path / "resumed"
    train(from_dict(TrainConfig, config(data_dir, resumed, train={"max_steps": 3})))
    train(from_dict(TrainConfig, config(data_dir, resumed)))  # picks up step-3, runs to 6
    a, b = final_state(straight), final_state(resumed)
    assert a["path"].name == b["path"].name == "step-6"
    for key, value in a["trainer"]["engine"]["model"].items():
        torch.testing.assert_close(b["trainer"]["engine"]["model"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(b["head"]["weight"], a["head"]["weight"], rtol=0, atol=0)


def _torchrun(args: list[str], *, cwd: Path, timeout: int = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_ranks_then_resume_resharded_on_one(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(data_dir, run, train={"max_steps": 4, "checkpoint_every": 4})))
    first = _torchrun(["--standalone", "--nproc_per_node", "2", "-m", "partial_fc.cli", "train", "--config", str(cfg_path)], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 rank(s)" in first.stdout and "step 4/4" in first.stdout
    second = _torchrun(["--standalone", "--nproc_per_node", "1", "-m", "partial_fc.cli", "train", "--config", str(cfg_path),
                        "--set", "train.max_steps=6"], cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resharded from world size 2" in second.stdout and "step 6/6" in second.stdout


def test_two_torchrun_agents_as_two_nodes_over_loopback(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(data_dir, run, train={"max_steps": 2, "checkpoint_every": 2}, eval={"pairs": []})))
    port = free_port()
    common = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
              "--rdzv_id", "pfc-test", "-m", "partial_fc.cli", "train", "--config", str(cfg_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On one machine both agents match the loopback endpoint; say which one hosts the store, as
    # the first node of a real cluster would.
    agents = [subprocess.Popen([TORCHRUN, "--node_rank", str(r), "--rdzv_conf", f"is_host={int(r == 0)}", *common],
                               cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for r in range(2)]
    try:
        outputs = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        for a in agents:  # never leave an agent waiting for a rendezvous behind
            if a.poll() is None:
                a.kill()
                a.communicate()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(outputs)
    assert any("2 rank(s)" in out for out in outputs)
    assert (latest_checkpoint(run) / "head-rank1.pt").exists()


def test_wandb_logs_offline_into_the_run_directory(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(from_dict(TrainConfig, config(data_dir, run, train={"max_steps": 2}, eval={"pairs": []}, wandb={"enabled": True})))
    assert list((run / "wandb").glob("offline-run-*")), "no offline wandb run written"


def test_fail_fast_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="data.train: no manifest.json in"):
        plan(from_dict(TrainConfig, config(tmp_path / "missing", tmp_path / "r")), world_size=1)
    with pytest.raises(ValueError, match=r"head.num_classes is 10 but the data's labels reach 23"):
        plan(from_dict(TrainConfig, config(data_dir, tmp_path / "r", head={"num_classes": 10})), world_size=1)
    with pytest.raises(ValueError, match="world size 64 exceeds the number of classes 24"):
        plan(from_dict(TrainConfig, config(data_dir, tmp_path / "r")), world_size=64)
    with pytest.raises(ValueError, match=r"head.sample_rte is not a valid key \(did you mean 'head.sample_rate'\?\)"):
        from_dict(TrainConfig, config(data_dir, tmp_path / "r", head={"sample_rte": 0.1}))
    with pytest.raises(ValueError, match="fp16 is not supported with train.engine deepspeed"):
        plan(from_dict(TrainConfig, config(data_dir, tmp_path / "r", train={"engine": "deepspeed", "precision": "fp16"})), world_size=1)
    with pytest.raises(ValueError, match="eval.pairs: file"):
        train(from_dict(TrainConfig, config(data_dir, tmp_path / "r", eval={"pairs": [str(tmp_path / "nope.npz")]})))


def test_checkpoint_of_another_class_count_is_refused(data_dir, tmp_path):
    run = tmp_path / "run"
    train(from_dict(TrainConfig, config(data_dir, run, train={"max_steps": 3}, eval={"pairs": []})))
    with pytest.raises(ValueError, match="num_classes"):
        train(from_dict(TrainConfig, config(data_dir, run, head={"num_classes": 30}, eval={"pairs": []})))


def test_torchrun_deepspeed_zero2_backbone(data_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is the optional 'deepspeed' extra")
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(data_dir, run, train={"max_steps": 3, "checkpoint_every": 3,
                                                                     "engine": "deepspeed", "zero_stage": 2})))
    done = _torchrun(["--standalone", "--nproc_per_node", "2", "-m", "partial_fc.cli", "train", "--config", str(cfg_path)],
                     cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 3/3" in done.stdout and "eval synthetic-heldout" in done.stdout
    assert latest_checkpoint(run).name == "step-3"


@pytest.mark.parametrize("margin,params", [("subcenter_arcface", {"scale": 16.0, "subcenters": 3}), ("adaface", {"scale": 16.0}),
                                           ("curricularface", {"scale": 16.0}), ("magface", {"scale": 16.0})])
def test_modern_margins_train_save_and_resume(data_dir, tmp_path, margin, params):
    run = tmp_path / "run"
    head = {"margin": margin, "margin_params": params}
    train(from_dict(TrainConfig, config(data_dir, run, head=head, train={"max_steps": 2, "checkpoint_every": 2}, eval={"pairs": []})))
    metrics = train(from_dict(TrainConfig, config(data_dir, run, head=head, train={"max_steps": 3}, eval={"pairs": []})))
    assert metrics["steps"] == 3 and latest_checkpoint(run).name == "step-3"


def test_fp16_with_gradient_accumulation(data_dir, tmp_path):
    """fp16 autocast + loss scaling on CPU, 2 micro-batches per step: the head's gradient is
    unscaled by the engine's loss scale and every step is taken or skipped on all ranks together."""
    run = tmp_path / "run"
    metrics = train(from_dict(TrainConfig, config(data_dir, run, train={"max_steps": 3, "precision": "fp16", "grad_accum": 2},
                                                  eval={"pairs": []})))
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["loss"]))
    from partial_fc.head.row_init import init_class_rows

    state = final_state(run)
    initial = init_class_rows(3, 0, 24, 32, std=0.01)  # seed 3, 24 classes, D 32, the default init_std
    moved = (state["head"]["weight"] != initial).any(1)
    assert moved.sum() >= 8, "the head never stepped: every fp16 step was skipped"
    assert state["trainer"]["engine"]["scaler"], "the engine's loss-scaler state is not in the checkpoint"
