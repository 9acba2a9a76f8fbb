"""Jobs on a real SLURM cluster (started by `.ci/slurm.sh start`; `.ci/run` does it under CI).

Not collected by `make test`: these tests need root-run daemons. Run by hand with
    sudo .ci/slurm.sh start && eval "$(.ci/slurm.sh env)" && .venv/bin/python -m pytest -q tests_slurm
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests_slurm.jobs import VENV_BIN


@pytest.fixture(scope="session", autouse=True)
def _cluster_is_up() -> None:
    if shutil.which("sinfo") is None:
        pytest.fail("tests_slurm needs a SLURM cluster: start one with .ci/slurm.sh start (sinfo not found)")
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "batch", "-o", "%t"], capture_output=True, text=True)
    if out.returncode != 0 or out.stdout.split()[:1] not in (["idle"], ["mix"], ["alloc"]):
        pytest.fail(f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()}); "
                    "start the cluster with .ci/slurm.sh start and export SLURM_CONF")


@pytest.fixture(scope="session")
def slurm_data(tmp_path_factory) -> Path:
    """40 identities x 8 images of 32 px in 2 shards (one per rank): a step takes ~0.1 s."""
    out = tmp_path_factory.mktemp("slurm-data") / "data"
    subprocess.run([str(VENV_BIN / "partial-fc"), "data", "synth", "--out", str(out), "--identities", "40",
                    "--images-per-identity", "8", "--size", "32", "--heldout-identities", "10", "--pairs", "40",
                    "--shard-samples", "160", "--seed", "0", "--quiet"], check=True)
    return out
