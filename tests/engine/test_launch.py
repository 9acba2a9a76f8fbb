"""launch/: shell scripts parse (`bash -n`) and use strict mode; submit_slurm.py only with --dry-run
(tests_slurm/ submits both to a real SLURM cluster in CI)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = ["torchrun_single_node.sh", "torchrun_multi_node.sh", "slurm.sbatch"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses_and_is_strict(name):
    path = LAUNCH / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert "set -euo pipefail" in text and "partial-fc train --config" in text


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCH / "submit_slurm.py"), *args, "--dry-run"],
                          capture_output=True, text=True)


def test_submit_slurm_dry_run():
    out = dry_run("--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--time", "2-00:00:00",
                  "--config", "configs/r 50.yaml", "--set", "train.epochs=20", "--set", "head.sample_rate=0.1")
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout)
    assert cmd[0] == "sbatch" and cmd[-6:] == [str(LAUNCH / "slurm.sbatch"), "configs/r 50.yaml", "--set",
                                              "train.epochs=20", "--set", "head.sample_rate=0.1"]
    for option in ["--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--time=2-00:00:00",
                   "--export=ALL,NPROC_PER_NODE=8", "--cpus-per-task=64"]:
        assert option in cmd


def test_submit_slurm_cpu_only_dry_run():
    out = dry_run("--gpus-per-node", "0", "--nproc-per-node", "2", "--cpus-per-task", "2", "--config", "c.yaml")
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout)
    assert "--export=ALL,NPROC_PER_NODE=2" in cmd and "--cpus-per-task=2" in cmd
    assert not any(x.startswith("--gpus") for x in cmd)


@pytest.mark.parametrize("args,message", [(["--time", "forever"], "not a SLURM time"),
                                          (["--set", "novalue"], "expected KEY=VALUE"),
                                          (["--nodes", "0"], "must be >= 1"),
                                          (["--gpus-per-node", "-1"], "must be >= 0")])
def test_submit_slurm_rejects_bad_arguments(args, message):
    out = dry_run("--config", "c.yaml", *args)
    assert out.returncode == 2 and message in out.stderr
