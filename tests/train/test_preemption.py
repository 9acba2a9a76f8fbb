"""PreemptionGuard: real signals (os.kill) to real processes — spawned gloo ranks, DataLoader
workers, a child interpreter — and the agreement of all ranks on the step to stop at."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from partial_fc.comm import SingleProcess, make_collectives
from partial_fc.train.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard, StepDecision, worker_init
from tests.distributed import run_ranks

CPU = torch.device("cpu")
MAX_STEPS = 20_000  # ~40 s of 2 ms steps: far more than the signal needs to arrive


def _loop_until_stop(rank: int, world: int, pid_dir: str, signals: tuple[str, ...]) -> dict:
    guard = PreemptionGuard(signals=signals).install()
    comm = make_collectives()
    Path(pid_dir, f"{rank}.pid").write_text(str(os.getpid()))  # only now can a signal be handled
    first_seen = None
    for step in range(1, MAX_STEPS + 1):
        time.sleep(0.002)  # a "training step"; the signal lands at any point of it
        stop = guard.should_stop(comm, CPU)
        if guard.requested and first_seen is None:
            first_seen = step
        if stop:
            return {"step": step, "first_seen": first_seen, "signal": guard.signal_name}
    return {"step": None, "first_seen": first_seen, "signal": guard.signal_name}


def _signal_when_ready(pid_file: Path, sig: signal.Signals) -> threading.Thread:
    def send() -> None:
        for _ in range(6000):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.01)
        time.sleep(0.3)  # a few dozen steps into the loop
        os.kill(int(pid_file.read_text()), sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("world, target, sig", [(2, 1, "SIGTERM"), (3, 0, "SIGUSR1")])
def test_one_signalled_rank_stops_every_rank_at_the_same_step(tmp_path, world, target, sig):
    sender = _signal_when_ready(tmp_path / f"{target}.pid", getattr(signal, sig))
    results = run_ranks(_loop_until_stop, world, str(tmp_path), ("SIGTERM", "SIGUSR1"), timeout_s=120)
    sender.join(timeout=5)
    steps = [r["step"] for r in results]
    assert steps[0] is not None and steps == [steps[0]] * world, results
    # only the signalled process saw the signal; the others stopped because of the all-reduce
    assert [r["signal"] for r in results] == [sig if r == target else None for r in range(world)]
    # the stop comes at the boundary the flag was set before, or the next one if it landed
    # during that boundary's all-reduce: at most the step in flight is run after the signal
    seen = results[target]["first_seen"]
    assert seen is not None and seen <= steps[0] <= seen + 1


def test_no_signal_no_stop_and_no_save_without_interval():
    guard = PreemptionGuard()
    assert guard.check(SingleProcess(), CPU) == StepDecision(stop=False, save=False)


class _Clock:
    """A wall clock that moves ``step_s`` per reading."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def _interval_decisions(rank: int, world: int, fast_rank: int) -> list[bool]:
    # one rank's clock runs 100 s per reading, the other stands still; interval 1 minute
    guard = PreemptionGuard(checkpoint_every_minutes=1.0, clock=_Clock(100.0 if rank == fast_rank else 0.0))
    comm = make_collectives()
    out = []
    for _ in range(2):
        decision = guard.check(comm, CPU)
        out.append(decision.save)
        if decision.save:
            guard.mark_saved()
    return out


def test_rank_zero_clock_decides_the_wall_clock_checkpoint():
    # rank 0's clock past the interval: every rank saves (and again: 100 s per reading > 60 s)
    assert run_ranks(_interval_decisions, 2, 0) == [[True, True], [True, True]]
    # only rank 1's clock is past the interval: nobody saves, the ranks still agree
    assert run_ranks(_interval_decisions, 2, 1) == [[False, False], [False, False]]


def test_mark_saved_restarts_the_interval():
    clock = _Clock(0.0)
    guard = PreemptionGuard(checkpoint_every_minutes=0.5, clock=clock)
    clock.now = 31.0
    assert guard.check(SingleProcess(), CPU).save
    guard.mark_saved()
    assert not guard.check(SingleProcess(), CPU).save
    clock.now = 62.0
    assert guard.check(SingleProcess(), CPU).save


def test_signals_during_a_save_corrupt_nothing(tmp_path):
    # The property under test is the handler's: it never raises into the code that is writing.
    # The write is torch.save + rename (what a checkpoint shard is), not the checkpoint module,
    # so that this test does not depend on the checkpoint layout.
    state = {"weight": torch.randn(20_000, 64, generator=torch.Generator().manual_seed(0)), "step": 3}
    stop_sending = threading.Event()

    def bombard() -> None:
        while not stop_sending.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.0005)

    with PreemptionGuard() as guard:
        sender = threading.Thread(target=bombard, daemon=True)
        sender.start()
        saves = 0
        try:
            # as many saves as it takes for signals to land during them: on a loaded machine the
            # sender thread may get few time slices, so a fixed number of saves is not enough
            while saves < 5 or (guard.signal_count <= 10 and saves < 500):
                tmp = tmp_path / f"shard-{saves}.pt.tmp"
                torch.save(state, tmp)
                os.replace(tmp, tmp_path / f"shard-{saves}.pt")
                saves += 1
        finally:
            stop_sending.set()
            sender.join()
    assert guard.signal_count > 10, "the test must really deliver signals during the saves"
    # both were pending at once: Python runs pending handlers in signal-number order
    assert guard.signal_name in ("SIGTERM", "SIGUSR1")
    for i in range(saves):
        loaded = torch.load(tmp_path / f"shard-{i}.pt", weights_only=True)
        assert loaded["step"] == 3 and torch.equal(loaded["weight"], state["weight"])


def test_uninstall_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    guard = PreemptionGuard(signals=("USR1",)).install()
    assert signal.getsignal(signal.SIGUSR1) == guard._handle
    guard.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


class _Pids(IterableDataset):
    def __iter__(self):
        for _ in range(200):
            time.sleep(0.01)
            yield os.getpid()


def _kill_worker_then_read(init) -> list[int]:
    it = iter(DataLoader(_Pids(), batch_size=None, num_workers=1, worker_init_fn=init,
                         multiprocessing_context="fork"))
    worker = next(it)
    os.kill(worker, signal.SIGTERM)
    time.sleep(0.3)
    return [worker] + [next(it) for _ in range(20)]


def test_dataloader_workers_ignore_sigterm_with_worker_init():
    pids = _kill_worker_then_read(worker_init)
    assert len(set(pids)) == 1 and pids[0] != os.getpid()


def test_without_worker_init_sigterm_kills_the_worker():
    # the contrast that makes the test above meaningful: torch reports the dead worker
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _kill_worker_then_read(None)


def test_worker_init_pickles_for_spawned_workers():
    assert pickle.loads(pickle.dumps(worker_init)) is worker_init


def test_preempted_process_exits_with_the_documented_code(tmp_path):
    assert PREEMPTED_EXIT_CODE not in (0, 1, 2) and PREEMPTED_EXIT_CODE < 128
    script = textwrap.dedent(f"""
        import sys, time, torch
        from partial_fc.comm import SingleProcess
        from partial_fc.train.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard
        guard = PreemptionGuard().install()
        print("ready", flush=True)
        for step in range(100_000):
            time.sleep(0.001)
            if guard.should_stop(SingleProcess(), torch.device("cpu")):
                open({str(tmp_path / "stopped")!r}, "w").write(str(step))
                sys.exit(PREEMPTED_EXIT_CODE)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == PREEMPTED_EXIT_CODE
    assert (tmp_path / "stopped").read_text().isdigit()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="SIGKILL"):
        PreemptionGuard(signals=("SIGKILL",))
    with pytest.raises(ValueError, match="'SIGNOPE'"):
        PreemptionGuard(signals=("SIGNOPE",))
    with pytest.raises(ValueError, match="empty"):
        PreemptionGuard(signals=())
    with pytest.raises(ValueError, match="checkpoint_every_minutes must be > 0"):
        PreemptionGuard(checkpoint_every_minutes=0)


def test_install_outside_the_main_thread_is_refused():
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, PreemptionGuard().install))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def _capture(errors: list, fn) -> None:
    try:
        fn()
    except ValueError as err:
        errors.append(err)
