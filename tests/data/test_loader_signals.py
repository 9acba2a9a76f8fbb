"""The training loaders' DataLoader workers ignore the preemption signals: SLURM signals every
process of a job step, and a worker that dies of the SIGTERM would end the run before the main
process has saved (the trainer turns the signal into a checkpoint at a step boundary)."""

from __future__ import annotations

import multiprocessing
import os
import signal
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
