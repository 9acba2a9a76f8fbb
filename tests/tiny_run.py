"""A tiny synthetic data set and training config shared by the trainer and command tests."""

from __future__ import annotations

from pathlib import Path

from partial_fc.cli import main as cli_main


def make_tiny_data(out: Path) -> Path:
    """24 identities x 8 images of 32x32 in several shards, 40 held-out verification pairs."""
    assert cli_main(["data", "synth", "--out", str(out), "--identities", "24", "--images-per-identity", "8",
                     "--size", "32", "--heldout-identities", "10", "--pairs", "40", "--shard-samples", "50", "--quiet"]) == 0
    return out


def tiny_config(data_dir: Path, run_dir: Path, **sections) -> dict:
    """A TrainConfig dict for a few CPU steps; ``sections`` update whole sections key by key."""
    cfg = {
        "run_dir": str(run_dir), "seed": 3,
        "model": {"name": "iresnet_tiny", "embedding_dim": 32, "input_size": 32, "norm": "batch"},
        "data": {"train": str(data_dir), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 50},
        "head": {"margin": "cosface", "margin_params": {"scale": 16.0}, "sample_rate": 0.5},
        "optim": {"lr": 0.1, "lr_reference_batch": None},
        "train": {"epochs": 2, "max_steps": 6, "log_every": 2, "checkpoint_every": 3, "progress_bar": False},
        "eval": {"pairs": [str(data_dir / "heldout.pairs.npz")], "every": 3, "batch_size": 32},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


def train_tiny_run(data_dir: Path, run_dir: Path) -> Path:
    """Two steps of the tiny config without evaluation, checkpointed at step 2: a run directory
    for the commands that read one (eval, embed, export, centers)."""
    from partial_fc.config import from_dict
    from partial_fc.config.train import TrainConfig
    from partial_fc.train.trainer import train

    train(from_dict(TrainConfig, tiny_config(data_dir, run_dir, eval={"pairs": []},
                                             train={"epochs": 1, "max_steps": 2, "log_every": 1, "checkpoint_every": 2})))
    return run_dir


def torchrun_train(nproc: int, cfg: dict, tmp_path: Path, name: str) -> str:
    """``partial-fc train`` under ``torchrun --standalone`` with ``nproc`` ranks on the config dict
    ``cfg`` (written to ``tmp_path/name.yaml``); asserts exit 0 and returns its stdout."""
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "partial_fc.cli", "train",
                           "--config", str(path)], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
