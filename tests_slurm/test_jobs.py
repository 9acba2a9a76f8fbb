"""launch/slurm.sbatch and launch/submit_slurm.py on a real one-node SLURM cluster, CPU only:
training on 2 ranks, preemption with a grace period, the time-limit signal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests_slurm.jobs import (ENDED, REPO, attempts, job_info, sbatch, train_overrides, user_env, wait_ended,
                              wait_for_log, wait_until)

SBATCH = str(REPO / "launch" / "slurm.sbatch")
CPUS = os.cpu_count() or 1


# 0: no DataLoader worker, the trainer and the launch path alone; 1: a worker per rank, which the
# job's SIGTERM/SIGUSR1 reach too (it must survive until the main process has saved)
WORKERS = [0, 1]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_sbatch_cpu_only_trains_two_ranks(tmp_path, slurm_data):
    out = tmp_path / "job.out"
    job = sbatch(["--nodes", "1", "--cpus-per-task", "2", f"--output={out}", SBATCH, "configs/demo.yaml",
                  *train_overrides(slurm_data, tmp_path / "run", epochs=2)], env=user_env(NPROC_PER_NODE="2"))
    info = wait_ended(job, timeout_s=300)
    log = out.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert "1 node(s) x 2 process(es)" in log and "partial-fc train: 2 rank(s) on cpu" in log
    assert _summary(tmp_path / "run")["steps"] == 40
    assert (tmp_path / "run" / "checkpoints" / "step-40").is_dir()


def test_submit_slurm_cpu_only_completes_and_leaves_no_file(tmp_path, slurm_data):
    before = set(Path("/tmp").glob("partial-fc-*.sbatch"))
    out = tmp_path / "job.out"
    cmd = [sys.executable, str(REPO / "launch" / "submit_slurm.py"), "--gpus-per-node", "0", "--nproc-per-node", "2",
           "--cpus-per-task", "2", "--time", "0:10:00", f"--output={out}", "--config", "configs/demo.yaml"]
    cmd += [x for x in train_overrides(slurm_data, tmp_path / "run", max_steps=12)]
    sub = subprocess.run(cmd, cwd=REPO, env=user_env(), capture_output=True, text=True)
    assert sub.returncode == 0, sub.stderr
    job = re.search(r"Submitted batch job (\d+)", sub.stdout).group(1)
    info = wait_ended(job, timeout_s=300)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), out.read_text()
    assert _summary(tmp_path / "run")["steps"] == 12
    assert set(Path("/tmp").glob("partial-fc-*.sbatch")) == before


def test_without_the_environment_the_job_says_so(tmp_path, slurm_data):
    out = tmp_path / "job.out"
    env = {**user_env(NPROC_PER_NODE="2"), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    job = sbatch(["--nodes", "1", "--cpus-per-task", "2", f"--output={out}", SBATCH, "configs/demo.yaml"], env=env)
    info = wait_ended(job, timeout_s=120)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    assert "'partial-fc' is not on PATH" in out.read_text() and "activate" in out.read_text()


def _check_resumed_losing_at_most_one_step(log: str, total: int) -> None:
    runs = attempts(log)
    assert len(runs) >= 2, log
    for before, after in zip(runs, runs[1:]):
        done = [int(s) for s in re.findall(rf"(?m)^step (\d+)/{total} ", before)]
        saved = [int(s) for s in re.findall(r"saved checkpoint \S*step-(\d+)", before)]
        assert done and saved, before
        # the signal's checkpoint covers every finished step, at most the one in flight is redone
        assert saved[-1] >= done[-1] and saved[-1] - done[-1] <= 1, before
        assert re.search(rf"loaded checkpoint \S+ at step {saved[-1]}\b", after), after
        assert re.search(rf"(?m)^step {saved[-1] + 1}/{total} ", after), after
    assert "exit code 75" in runs[0] or "requeueing" in runs[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", WORKERS)
def test_preemption_with_grace_time_requeues_and_completes(tmp_path, slurm_data, workers):
    out = tmp_path / "job.out"
    total = 300
    job = sbatch(["--nodes", "1", "--cpus-per-task", "2", f"--output={out}", SBATCH, "configs/demo.yaml",
                  *train_overrides(slurm_data, tmp_path / "run", workers=workers, epochs=100, max_steps=total,
                                   checkpoint_every=1000)],
                 env=user_env(NPROC_PER_NODE="2"))
    wait_for_log(out, rf"^step 20/{total} ", job_id=job, timeout_s=180)
    # a job of the higher-priority partition that needs every CPU: SLURM preempts ours
    # (SIGTERM, SIGKILL after the partition's GraceTime of 30 s, PreemptMode=REQUEUE)
    high = sbatch(["-p", "high", f"--cpus-per-task={CPUS}", f"--output={tmp_path / 'high.out'}", "--wrap", "sleep 5"],
                  env=user_env())
    info = wait_ended(job, timeout_s=600)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, log
    assert job_info(high)["JobState"] == "COMPLETED"
    assert "(SIGTERM" in log or "SIGTERM" in log
    _check_resumed_losing_at_most_one_step(log, total)
    assert _summary(tmp_path / "run")["steps"] == total


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("workers", WORKERS)
def test_time_limit_signal_requeues_and_completes(tmp_path, slurm_data, workers):
    out = tmp_path / "job.out"
    # A 2-minute limit, USR1 60 s before it (SLURM may send it up to 60 s earlier still). 6000
    # steps do not fit in 2 minutes at up to 50 steps/s (20-34 here), so the first attempt is
    # signalled while training; the requeued job then gets 15 minutes to finish.
    total = 6000
    job = sbatch(["--nodes", "1", "--cpus-per-task", "2", "--time=2", "--signal=B:USR1@60", f"--output={out}",
                  SBATCH, "configs/demo.yaml",
                  *train_overrides(slurm_data, tmp_path / "run", workers=workers, epochs=1000, max_steps=total,
                                   checkpoint_every=10_000)],
                 env=user_env(NPROC_PER_NODE="2"))
    wait_until(job, lambda i: int(i["Restarts"]) >= 1 or i["JobState"] in ENDED, timeout_s=400, what="a requeue")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=15:00"], check=True)
    info = wait_ended(job, timeout_s=1200)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, log
    assert "got SIGUSR1, forwarding it" in log
    _check_resumed_losing_at_most_one_step(log, total)
    assert _summary(tmp_path / "run")["steps"] == total
