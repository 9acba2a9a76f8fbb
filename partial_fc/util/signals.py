"""Signal names as users write them (``SIGTERM``, ``usr1``) and the one rule for processes that
must leave a signal to someone else: DataLoader workers ignore the preemption signals, so the
job's SIGTERM (SLURM sends it to every process of the step) cannot kill them while the main
process is still saving; they end when the main process shuts its loader down."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_numbers(names: Sequence[str]) -> tuple[signal.Signals, ...]:
    """``names`` as signals, duplicates dropped; ValueError for a name that is not a catchable signal."""
    if isinstance(names, str):
        names = (names,)
    out = []
    for name in names:
        upper = str(name).upper()
        sig = getattr(signal, upper if upper.startswith("SIG") else "SIG" + upper, None)
        if not isinstance(sig, signal.Signals) or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"signals must be catchable signal names, got {name!r}; "
                             "use names such as SIGTERM, SIGUSR1, SIGUSR2, SIGINT")
        out.append(sig)
    if not out:
        raise ValueError("signals must not be empty; name at least one signal, e.g. SIGTERM")
    return tuple(dict.fromkeys(out))


def check_signal_names(names: Sequence[str]) -> None:
    signal_numbers(names)


def ignore_signals(names: Sequence[str] = DEFAULT_STOP_SIGNALS) -> None:
    """Ignore ``names`` in this process (call it first thing in a worker)."""
    for sig in signal_numbers(names):
        signal.signal(sig, signal.SIG_IGN)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker process started by ``parent_pid``: the kernel kills the worker
    when its parent dies (Linux), and a worker whose parent is already gone exits now. torch's own
    check compares the parent pid with the one it reads at worker start, after ``worker_init_fn``;
    a parent SIGKILLed in between (an OOM kill, a node that dies) left workers orphaned forever."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the pid check below still closes the race
            pass
    if os.getppid() != parent_pid:
        os._exit(0)
