"""A rank that dies never hangs ``run_ranks``: real spawned gloo ranks that kill themselves,
raise alone, or die before the process group forms.

Elapsed bounds: spawning a rank imports torch (2-6 s on the 2 shared cores of CI), and the
parent notices a death within ~0.1 s plus a 1 s grace. 60 s leaves a wide margin over that, also
when other jobs load the machine (a load of 10 was seen while these ran in 2-4 s each),
and is still far below what a hang would cost (``timeout_s`` 300 s, the TCP store's 30 min).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from partial_fc.comm.local import RankFailure, describe_exit, run_ranks

BOUND_S = 60.0


def _kill_one(rank: int, world_size: int) -> None:
    dist.all_reduce(torch.ones(1))  # the group works before the death
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    dist.all_reduce(torch.ones(1))  # rank 0 would wait here for the dead peer
    time.sleep(600)


def _raise_on_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("bad shard on rank 1")
    dist.barrier()  # rank 0 waits for a peer that will never arrive
    time.sleep(600)


def _all_die(rank: int, world_size: int) -> None:
    # both past the group's set-up first: a rank still connecting when its peer exits raises
    # "Connection reset by peer" instead of reaching its own death
    dist.barrier()
    if rank == 0:
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


class _DieWhenUnpickled:
    """Unpickled by every rank before ``init_process_group``; the first one to do so dies."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_die_once, (self.marker,))


def _die_once(marker: str) -> str:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return marker
    os.kill(os.getpid(), signal.SIGKILL)
    return marker  # not reached


def _wait_forever(rank: int, world_size: int, marker: str) -> None:
    time.sleep(600)


def _timed(fn, *args) -> tuple[RankFailure, float]:
    t0 = time.monotonic()
    with pytest.raises(RankFailure) as info:
        run_ranks(fn, 2, *args)
    return info.value, time.monotonic() - t0


def test_sigkilled_rank_is_named_and_ends_the_run():
    err, elapsed = _timed(_kill_one)
    assert err.summary.startswith("rank 1 was killed by signal 9 (SIGKILL; the kernel's OOM killer sends this)")
    assert elapsed < BOUND_S


def test_exception_on_one_rank_only():
    err, elapsed = _timed(_raise_on_one)
    assert err.summary.startswith("rank 1 raised ValueError: bad shard on rank 1")
    assert "Traceback" in str(err) and "\n" not in err.summary
    assert elapsed < BOUND_S


def test_death_before_the_process_group_forms(tmp_path):
    err, elapsed = _timed(_wait_forever, _DieWhenUnpickled(str(tmp_path / "died")))
    assert "was killed by signal 9 (SIGKILL" in err.summary and err.summary.startswith("rank ")
    assert elapsed < BOUND_S


def test_all_ranks_dying_names_each():
    err, elapsed = _timed(_all_die)
    assert "rank 0 exited with code 3" in err.summary
    assert "rank 1 was killed by signal 9" in err.summary
    assert elapsed < BOUND_S


def test_describe_exit():
    assert describe_exit(2) == "exited with code 2"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal 11 (SIGSEGV)"
