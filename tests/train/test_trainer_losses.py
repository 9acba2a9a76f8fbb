"""The pair, triplet and agent losses through the trainer: identity-balanced batches from real
shards, checkpoints with and without class weights, exact resume, torchrun at two ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from partial_fc.config import from_dict
from partial_fc.config.errors import ConfigError
from partial_fc.config.train import TrainConfig
from partial_fc.checkpoint import latest_checkpoint, read_meta
from partial_fc.checkpoint.files import safe_load
from partial_fc.train.trainer import train
from tests.tiny_run import tiny_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def config(data_dir: Path, run: Path, loss: dict, **sections) -> dict:
    # batch 8 = 2 identities x 4 images per rank; the tiny set has 24 identities x 8 images
    return tiny_config(data_dir, run, loss=loss, eval={"pairs": []}, **sections)


def model_state(run: Path) -> dict:
    return safe_load(latest_checkpoint(run) / "trainer.pt")["engine"]["model"]


@pytest.mark.parametrize("loss", [{"name": "triplet"}, {"name": "triplet", "mining": "batch_hard"},
                                  {"name": "contrastive"}, {"name": "c_contrastive"}, {"name": "c_triplet"},
                                  {"name": "c_triplet", "negatives": "hardest"}])
def test_each_loss_trains_and_the_backbone_moves(data_dir, tmp_path, loss):
    run = tmp_path / "run"
    # no weight decay: a parameter then moves only if the loss's gradient reaches it
    metrics = train(from_dict(TrainConfig, config(data_dir, run, loss, train={"max_steps": 3, "checkpoint_every": 3},
                                                  optim={"lr": 0.1, "lr_reference_batch": None, "weight_decay": 0.0})))
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["loss"]))
    meta = read_meta(latest_checkpoint(run))
    assert meta["extra"]["loss"] == loss["name"]
    if loss["name"] in ("triplet", "contrastive"):
        assert meta["num_classes"] is None and meta["class_ranges"] == []
        assert not list(latest_checkpoint(run).glob("head-rank*.pt"))
    else:
        assert meta["num_classes"] == 24 and meta["class_ranges"] == [[0, 24]]
    torch.manual_seed(3)  # the trainer's backbone initialisation (seed 3 in tiny_config)
    model = from_dict(TrainConfig, config(data_dir, run, loss)).model.build()
    trained = model_state(run)
    # parameters only: batch-norm running statistics change without any gradient
    moved = [name for name, p in model.named_parameters() if not torch.equal(trained[name], p.detach())]
    assert len(moved) > len(list(model.parameters())) // 2, f"only {moved} changed"


@pytest.mark.parametrize("loss", ["triplet", "c_triplet"])
def test_resume_mid_epoch_is_exact(data_dir, tmp_path, loss):
    """Identity-balanced batches resume at their position in the epoch without re-reading the
    skipped ones; the result is bit-identical to a straight run (with and without class weights)."""
    sampler = {"sampler": "identity", "images_per_identity": 4}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(from_dict(TrainConfig, config(data_dir, straight, {"name": loss}, data=sampler)))
    train(from_dict(TrainConfig, config(data_dir, resumed, {"name": loss}, data=sampler, train={"max_steps": 3})))
    train(from_dict(TrainConfig, config(data_dir, resumed, {"name": loss}, data=sampler)))
    assert latest_checkpoint(straight).name == latest_checkpoint(resumed).name == "step-6"
    a, b = model_state(straight), model_state(resumed)
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)
    if loss == "c_triplet":
        wa = safe_load(latest_checkpoint(straight) / "head-rank0.pt")["weight"]
        wb = safe_load(latest_checkpoint(resumed) / "head-rank0.pt")["weight"]
        torch.testing.assert_close(wb, wa, rtol=0, atol=0)


def test_checkpoint_of_another_loss_is_refused(data_dir, tmp_path):
    run = tmp_path / "run"
    train(from_dict(TrainConfig, config(data_dir, run, {"name": "triplet"}, train={"max_steps": 2, "checkpoint_every": 2})))
    with pytest.raises(ValueError, match=r"holds no class weights, this run has a head of 24 classes"):
        train(from_dict(TrainConfig, config(data_dir, run, {"name": "partial_fc"}, train={"max_steps": 3})))
    run2 = tmp_path / "run2"
    train(from_dict(TrainConfig, config(data_dir, run2, {"name": "c_triplet"}, train={"max_steps": 2, "checkpoint_every": 2})))
    with pytest.raises(ValueError, match=r"was saved with loss='c_triplet', this run has loss='c_contrastive'"):
        train(from_dict(TrainConfig, config(data_dir, run2, {"name": "c_contrastive"}, train={"max_steps": 3})))


@pytest.mark.parametrize("change,message", [
    ({"loss": {"name": "triplet"}, "data": {"sampler": "stream"}},
     r"data.sampler is 'stream' but loss.name triplet needs several images per identity"),
    ({"loss": {"name": "contrastive"}, "data": {"images_per_identity": 3}},
     r"data.batch_size 8 is not a multiple of data.images_per_identity 3"),
    ({"loss": {"name": "triplet"}, "data": {"images_per_identity": 1}},
     r"data.images_per_identity is 1 but loss.name triplet needs >= 2"),
    ({"loss": {"name": "partial_fc", "margin": 0.3}}, r"loss.margin is 0.3 but loss.name partial_fc takes its margin from head"),
    ({"loss": {"name": "contrastive", "mining": "batch_all"}}, r"loss.mining and loss.semihard_fallback apply to loss.name triplet only"),
    ({"loss": {"name": "tripplet"}}, r"loss.name must be one of .*got 'tripplet'"),
    ({"loss": {"name": "c_contrastive", "negatives": "hardest"}}, r"loss.negatives applies to loss.name c_triplet only"),
])
def test_config_errors_name_the_fix(data_dir, tmp_path, change, message):
    cfg = tiny_config(data_dir, tmp_path / "r")
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, cfg)


def test_too_few_identities_fail_before_training(data_dir, tmp_path):
    # 24 identities but P = 128 / 4 = 32 per rank
    cfg = config(data_dir, tmp_path / "r", {"name": "triplet"}, data={"batch_size": 128, "images_per_identity": 4})
    with pytest.raises(ValueError, match=r"only 24 identities .* fewer than p \* world_size = 32"):
        train(from_dict(TrainConfig, cfg))
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_torchrun_two_ranks_triplet_and_agents_then_resume_on_one(data_dir, tmp_path):
    """Two gloo ranks under torchrun with identity-balanced batches; the C-triplet agents are
    saved as two shards and resharded onto one rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for loss in ("triplet", "c_triplet"):
        run = tmp_path / loss
        cfg_path = tmp_path / f"{loss}.yaml"
        cfg_path.write_text(yaml.safe_dump(config(data_dir, run, {"name": loss}, data={"sampler": "identity"},
                                                  train={"max_steps": 2, "checkpoint_every": 2})))
        base = [TORCHRUN, "--standalone", "-m", "partial_fc.cli", "train", "--config", str(cfg_path)]
        first = subprocess.run(base[:2] + ["--nproc_per_node", "2"] + base[2:], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"2 rank(s) on cpu, loss {loss}" in first.stdout and "2 identities x 4 images per rank" in first.stdout
        second = subprocess.run(base[:2] + ["--nproc_per_node", "1"] + base[2:] + ["--set", "train.max_steps=3"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "step 3/3" in second.stdout
        if loss == "c_triplet":
            assert "resharded from world size 2" in second.stdout
