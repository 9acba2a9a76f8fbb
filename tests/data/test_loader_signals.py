"""The training loaders' DataLoader workers ignore the preemption signals: SLURM signals every
process of a job step, and a worker that dies of the SIGTERM would end the run before the main
process has saved (the trainer turns the signal into a checkpoint at a step boundary)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.stream import build_stream_loader
from tests.data.helpers import write_shards


def _read_after_signal(tmp_path: Path, ignore: tuple[str, ...], sig: signal.Signals) -> int:
    shards = write_shards(tmp_path, [40, 40])
    config = TrainLoaderConfig(shards=tuple(shards), batch_size=4, image_size=32, num_workers=1, shuffle_buffer=1,
                               flip=False, steps_per_epoch=12, worker_start_method="fork", ignore_signals=ignore)
    batches = iter(build_stream_loader(config, rank=0, world_size=1))
    next(batches)
    workers = [p for p in multiprocessing.active_children() if p.pid != os.getpid()]
    assert workers, "the loader must run a worker process for this test to mean anything"
    for p in workers:
        os.kill(p.pid, sig)
    time.sleep(0.5)  # the signal is delivered before the next batches are asked for
    return 1 + sum(1 for _ in batches)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_workers_survive_the_preemption_signals(tmp_path: Path, sig: signal.Signals) -> None:
    assert _read_after_signal(tmp_path, ("SIGTERM", "SIGUSR1"), sig) == 12


def test_a_signal_not_in_the_list_still_kills_a_worker(tmp_path: Path) -> None:
    # the contrast that shows the signal really reached the worker above
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _read_after_signal(tmp_path, ("SIGUSR1",), signal.SIGTERM)


def test_bad_signal_names_are_refused_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match="'SIGNOPE'"):
        TrainLoaderConfig(shards=("a.tar",), batch_size=4, ignore_signals=("SIGNOPE",))


def test_a_worker_ends_when_its_parent_is_killed() -> None:
    # A worker ignoring SIGTERM must still end with its parent (an OOM kill, a node's SIGKILL).
    # torch's own check reads the parent pid after worker_init_fn and polls it every 5 s; a parent
    # killed while the worker starts left the worker orphaned forever (seen after a SIGKILLed rank).
    # Here the worker blocks in a sleep that no torch check interrupts: only the parent-death
    # signal can end it within the deadline.
    script = textwrap.dedent("""
        import multiprocessing, os, signal, time
        from partial_fc.util.signals import die_with_parent, ignore_signals
        def worker(parent):
            quiet = os.open(os.devnull, os.O_WRONLY)  # let go of the test's pipes
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            die_with_parent(parent)
            ignore_signals(("SIGTERM", "SIGUSR1"))
            time.sleep(600)
        child = multiprocessing.get_context("fork").Process(target=worker, args=(os.getpid(),))
        child.start()
        time.sleep(0.5)
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout)
    deadline = time.monotonic() + 5  # the kernel kills it at the parent's exit; 5 s is slack for load
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive


def test_a_worker_whose_parent_is_already_gone_exits() -> None:
    script = "from partial_fc.util.signals import die_with_parent; die_with_parent(1 << 30); print('not reached')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
