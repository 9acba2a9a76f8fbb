"""Save at the signal: preemption and time-limit signals become a stop at a step boundary that
every rank agrees on, followed by a checkpoint and the exit code ``PREEMPTED_EXIT_CODE``.

    guard = PreemptionGuard(signals=("SIGTERM", "SIGUSR1"), checkpoint_every_minutes=30)
    guard.install()                              # once, in the main process, before the loop
    for step ...:
        ...optimizer step...
        decision = guard.check(comm, device)     # every step boundary, on every rank
        if decision.save or decision.stop:
            save_checkpoint(...); guard.mark_saved()
        if decision.stop:
            cleanup(wait_for_all=True); sys.exit(PREEMPTED_EXIT_CODE)

Why the pieces are as they are:

- The signal handler only records the signal (two attribute writes). It never raises and does
  no I/O, so a signal that lands while a checkpoint is being written (a second SIGTERM, the
  USR1 of a time limit after the TERM of a preemption) cannot interrupt the write: the save
  finishes, and the flag is merely set again. Only SIGKILL (after SLURM's GraceTime) can stop
  a save half-way, and a checkpoint folder counts only once it is complete.
- SLURM signals every process of a job step, or only some (``scancel --signal`` to one node,
  a signal that reaches one task first). ``check`` does one all-reduce (MAX) of a 2-element
  tensor, so all ranks stop after the same step even when only one of them got the signal.
- The wall-clock checkpoint interval rides on the same all-reduce: only rank 0 puts its clock
  in, so the ranks cannot disagree because their clocks drift or their steps end at slightly
  different times.
- DataLoader workers must not die of the job's SIGTERM before the main process has saved:
  ``ignore_in_worker`` is called from a ``worker_init_fn``; the workers end when the main
  process shuts its loader down.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import torch

from partial_fc.comm.collectives import Collectives
from partial_fc.util.signals import DEFAULT_STOP_SIGNALS, ignore_signals, signal_numbers

# "preempted, resume me": EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to
# retry"). Not 0/1/2 (success, error, usage), not 128+n (killed by signal n), and not a code
# Python or torchrun use for themselves. launch/slurm.sbatch requeues the job on this code.
PREEMPTED_EXIT_CODE = 75

DEFAULT_SIGNALS = DEFAULT_STOP_SIGNALS


@dataclass(frozen=True)
class StepDecision:
    """What every rank does after this step; identical on all ranks."""

    stop: bool  # some rank got a preemption signal: save, then exit with PREEMPTED_EXIT_CODE
    save: bool  # rank 0's wall clock says a checkpoint is due (train.checkpoint_every_minutes)


class PreemptionGuard:
    """Turns ``signals`` into an agreed stop at a step boundary; optionally a wall-clock
    checkpoint interval. Install once in the main process of each rank (``install``)."""

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS, *, checkpoint_every_minutes: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if checkpoint_every_minutes is not None and not checkpoint_every_minutes > 0:
            raise ValueError(f"train.checkpoint_every_minutes must be > 0 or null, got {checkpoint_every_minutes}")
        self.signals = signal_numbers(signals)
        self.interval_s = None if checkpoint_every_minutes is None else 60.0 * checkpoint_every_minutes
        self._clock = clock
        self._last_save = clock()
        self._previous: dict[signal.Signals, object] = {}
        self._signum: int | None = None  # the first signal received
        self._count = 0

    # -- signals ---------------------------------------------------------------------------
    def install(self) -> PreemptionGuard:
        """Install the handlers (main thread only; Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("PreemptionGuard.install() must run in the main thread, where Python handles signals")
        if self._previous:
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Flag only: no raise, no I/O, no lock (see the module docstring).
        if self._signum is None:
            self._signum = signum
        self._count += 1

    @property
    def requested(self) -> bool:
        """This process received one of the signals (rank-local; ``check`` makes it global)."""
        return self._signum is not None

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal this process received, e.g. "SIGTERM"."""
        return None if self._signum is None else signal.Signals(self._signum).name

    @property
    def signal_count(self) -> int:
        return self._count

    # -- the step boundary -----------------------------------------------------------------
    def check(self, comm: Collectives, device: torch.device) -> StepDecision:
        """The decision after this step, the same on every rank.

        Collectives: one all-reduce MAX of 2 floats (then one host sync to read them); call it
        on every rank at every step boundary, never on only some ranks."""
        due = comm.rank == 0 and self.interval_s is not None and self._clock() - self._last_save >= self.interval_s
        flags = torch.tensor([float(self.requested), float(due)], device=device)
        stop, save = comm.all_reduce_(flags, "max").tolist()
        return StepDecision(stop=stop > 0, save=save > 0)

    def should_stop(self, comm: Collectives, device: torch.device) -> bool:
        """``check(comm, device).stop``: for loops without a wall-clock interval. Each call is
        one all-reduce; do not call both this and ``check`` at the same step."""
        return self.check(comm, device).stop

    def mark_saved(self) -> None:
        """A checkpoint was written (for any reason): restart the wall-clock interval."""
        self._last_save = self._clock()


def ignore_in_worker(signals: Sequence[str] = DEFAULT_SIGNALS) -> None:
    """Call from a DataLoader ``worker_init_fn`` (the training loaders do, through their config's
    ``ignore_signals``): see ``partial_fc.util.signals``."""
    ignore_signals(signals)


def worker_init(worker_id: int) -> None:
    """A ready ``worker_init_fn`` ignoring the default signals (module level, so it pickles
    for spawned workers)."""
    ignore_in_worker(DEFAULT_SIGNALS)
