"""Run a function on N local ranks (spawned processes, a real process group) and collect what
each returns. Used by the benchmarks and the distributed tests; training uses torchrun.

The parent watches its children: a rank that dies (a signal such as the OOM killer's SIGKILL,
an exit before returning, an exception) ends the whole run within about a second, the other
ranks are killed, and ``RankFailure`` names the rank and how it ended. Nothing waits for the
TCP store's or a collective's own timeout.
"""

from __future__ import annotations

import io
import os
import queue as queue_lib
import signal
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_POLL_S = 0.1
# After a first failure, how long the other ranks get to report theirs: a peer's death makes
# the survivors fail in their next collective within milliseconds, and a signal death seen in
# that window is named as the cause rather than the survivors' connection errors.
_GRACE_S = 1.0


class RankFailure(RuntimeError):
    """A spawned rank failed. ``summary`` is one line; ``str()`` adds the ranks' tracebacks."""

    def __init__(self, summary: str, details: str = "") -> None:
        super().__init__(summary + (f"\n{details}" if details else ""))
        self.summary = summary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(exitcode: int) -> str:
    """How a process ended, from ``Process.exitcode`` (negative: killed by that signal)."""
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = "unknown signal"
    if -exitcode == signal.SIGKILL:
        name += "; the kernel's OOM killer sends this"
    return f"was killed by signal {-exitcode} ({name})"


def _entry(rank: int, world_size: int, port: int, backend: str, threads: int, fn: Callable, args: tuple, queue) -> None:
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        buffer = io.BytesIO()
        torch.save(result, buffer)  # plain bytes: no shared-memory handles that die with this process
        message = (rank, "ok", buffer.getvalue())
    except BaseException as err:  # report any failure to the parent instead of hanging it
        # reported before the group is torn down, so that it reaches the parent ahead of the
        # connection errors its peers get from that tear-down
        last = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
        queue.put((rank, "error", (last, traceback.format_exc())))
        message = None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if message is not None:
        queue.put(message)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
              threads_per_rank: int = 1, timeout_s: float = 300.0) -> list[Any]:
    """``fn(rank, world_size, *args)`` on each of ``world_size`` ranks; returns results by rank.

    ``fn`` must be importable (module level) and return tensors or plain data. Raises
    ``RankFailure`` within about a second when any rank raises, is killed or exits without a
    result (the others are killed), or when no rank reports for ``timeout_s``.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, backend, threads_per_rank, fn, args, queue))
             for r in range(world_size)]
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank))
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        failure = _collect(procs, queue, results, timeout_s)
    finally:
        for p in procs:
            p.join(timeout=5 if len(results) == world_size else 0)
            if p.is_alive():
                p.kill()
                p.join()
    if failure is not None:
        raise failure
    return [results[r] for r in range(world_size)]


def _collect(procs: list, queue, results: dict[int, Any], timeout_s: float) -> RankFailure | None:
    """Read the ranks' reports until all are in or one fails; the failure, or None."""
    errors: dict[int, tuple[str, str]] = {}  # rank -> (last line, traceback), in arrival order
    deaths: dict[int, int] = {}  # rank -> exit code of a rank that ended without reporting
    silent_since = time.monotonic()
    failed_at = None
    while len(results) < len(procs):
        now = time.monotonic()
        if failed_at is not None and now - failed_at > _GRACE_S:
            break
        if failed_at is None and now - silent_since > timeout_s:
            return RankFailure(f"no rank reported for {timeout_s:g} s (ranks {sorted(set(range(len(procs))) - set(results))} "
                               f"still running); raise timeout_s if the work is that long")
        try:
            rank, status, payload = queue.get(timeout=_POLL_S)
        except queue_lib.Empty:
            _note_deaths(procs, queue, results, errors, deaths)
        else:
            silent_since = time.monotonic()
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(payload), weights_only=True)
            else:
                errors[rank] = payload
        if (errors or deaths) and failed_at is None:
            failed_at = time.monotonic()
    if not (errors or deaths):
        return None
    _note_deaths(procs, queue, results, errors, deaths)
    # a rank that died by itself is the cause; the others' errors are usually its consequence
    if deaths:
        rank, code = next(iter(deaths.items()))
        summary = f"rank {rank} {describe_exit(code)} before returning a result"
    else:
        rank, (last, _) = next(iter(errors.items()))
        summary = f"rank {rank} raised {last}"
    others = [f"rank {r} {describe_exit(c)}" for r, c in deaths.items() if r != rank]
    others += [f"rank {r} raised {e[0]}" for r, e in errors.items() if r != rank]
    if others:
        summary += f" (then: {'; '.join(others)})"
    return RankFailure(summary, "\n".join(f"rank {r}:\n{e[1]}" for r, e in errors.items()))


def _note_deaths(procs, queue, results, errors, deaths) -> None:
    """Record ranks that ended without a report (after draining what they may have sent)."""
    ended = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in results and r not in errors
             and r not in deaths]
    if not ended:
        return
    try:  # a rank that reported and exited at once: its message may still be in the pipe
        while True:
            rank, status, payload = queue.get(timeout=_POLL_S)
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(payload), weights_only=True)
            else:
                errors[rank] = payload
    except queue_lib.Empty:
        pass
    for r in ended:
        if r not in results and r not in errors:
            deaths[r] = procs[r].exitcode
