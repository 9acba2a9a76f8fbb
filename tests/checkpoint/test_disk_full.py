"""A checkpoint that does not fit is one line saying so and where, on every rank, and leaves the
earlier checkpoint loadable. Real limits, nothing simulated: a small tmpfs (needs root, which
may mount it) for a full disk, and RLIMIT_FSIZE (any user) for the file size limit, where the
kernel answers EFBIG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from partial_fc.comm import SingleProcess, make_collectives
from tests.distributed import run_ranks
from tests.disk import small_disk as mount_small_disk

REPO = Path(__file__).resolve().parents[2]
DISK_BYTES = 1 << 20  # holds the small checkpoint (about 40 KiB), not a 2 MB trainer state


def _head() -> PartialFC:
    return PartialFC(100, 16, margin="softmax", seed=1)


@pytest.fixture
def small_disk(tmp_path):
    with mount_small_disk(tmp_path, DISK_BYTES) as mount:
        yield mount


def _save_small_then_big(rank: int, world: int, run_dir: str) -> str:
    comm = make_collectives()
    save_checkpoint(run_dir, 1, comm=comm, head=_head(), head_optimizer=None, trainer_state={"x": torch.zeros(4)})
    try:
        save_checkpoint(run_dir, 2, comm=comm, head=_head(), head_optimizer=None,
                        trainer_state={"x": torch.zeros(DISK_BYTES // 2)})  # 2 MB, written by rank 0
    except ValueError as e:
        return str(e)
    return "saved"


def test_a_full_disk_is_named_on_every_rank(small_disk):
    run_dir = small_disk / "run"
    rank0, rank1 = run_ranks(_save_small_then_big, 2, str(run_dir))
    # torch alone says "unexpected pos 110912 vs 110808"; this names the cause, the file and the mount
    assert rank0.startswith("the disk is full writing checkpoint file ") and "\n" not in rank0
    # the free space is read when the write fails: rank 1's head and rng files may still be
    # settling on the tmpfs then, so it is a few KiB at most, not always exactly 0
    assert "step-2.tmp-" in rank0 and re.search(r"trainer\.pt \(trainer_state\): ([0-9]+ bytes|[0-9.]+ KiB) free on ", rank0), rank0
    assert str(small_disk) in rank0 and "set run_dir to another file system" in rank0
    # rank 1 names rank 0's failure, or (when rank 0's 2 MB filled the disk before rank 1's own
    # small files were written, which happens under load) its own full disk
    assert rank1 == "writing checkpoint files failed on rank(s) [0]; see their error" or (
        rank1.startswith("the disk is full writing checkpoint file ") and "rank1" in rank1 and "\n" not in rank1), rank1
    assert [step for step, _ in list_checkpoints(run_dir)] == [1]
    (tmp,) = (run_dir / "checkpoints").glob("step-2.tmp-*")
    assert not (tmp / "trainer.pt").exists()  # the partial file is gone, its space given back
    state = load_checkpoint(latest_checkpoint(run_dir), comm=SingleProcess(), head=PartialFC(100, 16, margin="softmax"),
                            head_optimizer=None, restore_rng=False)
    assert torch.equal(state["x"], torch.zeros(4))


def test_the_file_size_limit_is_named(tmp_path):
    # its own process: the limit (and ignoring SIGXFSZ, so the write fails with EFBIG instead of
    # killing the process) must not touch the test runner
    code = ("import sys; from tests.checkpoint.test_disk_full import _save_under_fsize_limit; "
            "_save_under_fsize_limit(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("the file size limit is reached writing checkpoint file "), line
    assert "trainer.pt (trainer_state): this process may write files of at most 256.0 KiB (ulimit -f)" in line
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]


def _save_under_fsize_limit(run_dir: str) -> None:
    import resource
    import signal

    save_checkpoint(run_dir, 1, comm=SingleProcess(), head=_head(), head_optimizer=None, trainer_state={})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint(run_dir, 2, comm=SingleProcess(), head=_head(), head_optimizer=None,
                        trainer_state={"x": torch.zeros(1 << 18)})  # 1 MiB
    except ValueError as e:
        print(e)
