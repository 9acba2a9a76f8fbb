"""launch/: shell scripts parse (`bash -n`) and use strict mode; submit_slurm.py only with --dry-run."""

from __future__ import annotations

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


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")
def test_submit_slurm_dry_run(tmp_path):
    out = dry_run("--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--time", "2-00:00:00",
                  "--config", "configs/r 50.yaml", "--set", "train.epochs=20", "--set", "head.sample_rate=0.1")
    assert out.returncode == 0, out.stderr
    script = out.stdout
    for line in ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2-00:00:00", "--nnodes 4 --nproc_per_node 8", "--rdzv_backend c10d",
                 "partial-fc train --config 'configs/r 50.yaml' --set train.epochs=20 --set head.sample_rate=0.1"]:
        assert line in script
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)


@pytest.mark.parametrize("args,message", [(["--time", "forever"], "not a SLURM time"),
                                          (["--set", "novalue"], "expected KEY=VALUE"),
                                          (["--nodes", "0"], "must be >= 1")])
def test_submit_slurm_rejects_bad_arguments(args, message):
    out = dry_run("--config", "c.yaml", *args)
    assert out.returncode == 2 and message in out.stderr
