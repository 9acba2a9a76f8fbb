"""Submit jobs the way the docs say and watch them through `scontrol` until they end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the environment a user activates before sbatch

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def user_env(**extra: str) -> dict[str, str]:
    """A shell with the virtual environment activated, as docs/launch.md asks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def train_overrides(data: Path, run_dir: Path, *, workers: int = 1, **train: object) -> list[str]:
    """configs/demo.yaml made small: 32 px images, 8 per rank, 20 steps per epoch."""
    sets = {"run_dir": run_dir, "data.train": data, "model.input_size": 32, "data.batch_size": 8,
            "data.num_workers": workers, "data.shuffle_buffer": 50, "train.log_every": 1, "train.checkpoint_every": 10,
            "eval.pairs": f"[{data / 'heldout.pairs.npz'}]", "eval.every": 10_000}
    sets.update({f"train.{k}": v for k, v in train.items()})
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def sbatch(args: list[str], *, env: dict[str, str]) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"sbatch refused the job: {out.stderr.strip()}"
    return out.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait_until(job_id: str, predicate, *, timeout_s: float, what: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if predicate(info):
            return info
        time.sleep(1.0)
    subprocess.run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id}: {what} not reached in {timeout_s:.0f} s; last state {job_info(job_id)}")


def wait_ended(job_id: str, *, timeout_s: float) -> dict[str, str]:
    return wait_until(job_id, lambda i: i["JobState"] in ENDED, timeout_s=timeout_s, what="the end")


def wait_for_log(path: Path, pattern: str, *, job_id: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return match
        if job_info(job_id)["JobState"] in ENDED:
            break
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id}: {pattern!r} not in {path} after {timeout_s:.0f} s:\n"
                         f"{path.read_text(errors='replace') if path.exists() else '(no output)'}")


def attempts(log: str) -> list[str]:
    """The job's output split at each start of slurm.sbatch (one piece per run of the job)."""
    return [piece for piece in re.split(r"(?m)^(?=slurm\.sbatch: job \d+ \(restart \d+\))", log) if piece.strip()]
