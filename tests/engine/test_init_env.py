"""partial_fc.comm.process_group: environment parsing, the collective timeout, and a rank whose peer dies."""

from __future__ import annotations

import pytest

from partial_fc.comm.process_group import (DEFAULT_TIMEOUT_S, TIMEOUT_ENV, cleanup, expand_nodelist, init_distributed,
                                          port_from_job_id, read_env, timeout_from_env)

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
         "SLURM_JOB_NODELIST": "node[01-03,07]", "SLURM_JOB_ID": "123456"}


def no_scontrol(nodelist: str) -> None:
    return None


@pytest.mark.parametrize("nodelist,hosts", [
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("gpu-a,gpu-b", ["gpu-a", "gpu-b"]),
    ("single", ["single"]),
    ("a[9-10],b1", ["a9", "a10", "b1"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad,match", [("node[01-03", "unmatched"), ("node[3-1]", "backwards"),
                                       ("node[a-b]", "cannot read"), ("", "names no host")])
def test_expand_nodelist_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        expand_nodelist(bad)


def test_torchrun_env():
    info = read_env(TORCHRUN, resolve_host=no_scontrol)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port, info.source) == \
        (3, 8, 1, "10.0.0.1", 29500, "torchrun")


def test_torchrun_wins_over_slurm():  # srun launching torchrun: both sets present
    assert read_env({**SLURM, **TORCHRUN}, resolve_host=no_scontrol).source == "torchrun"


def test_slurm_env_first_host_and_port_from_job_id():
    info = read_env(SLURM, resolve_host=no_scontrol)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (5, 16, 1, "slurm")
    assert info.master_addr == "node01"
    assert info.master_port == port_from_job_id("123456") and 20000 <= info.master_port < 40000


def test_slurm_prefers_scontrol_then_explicit_env():
    assert read_env(SLURM, resolve_host=lambda nodes: "node01.cluster").master_addr == "node01.cluster"
    env = {**SLURM, "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "12345"}
    info = read_env(env, resolve_host=lambda nodes: "ignored")
    assert (info.master_addr, info.master_port) == ("10.1.1.1", 12345)


def test_neither_is_single_process():
    info = read_env({"SLURM_JOB_NODELIST": "node01", "SLURM_NTASKS": "4"})  # salloc shell, no srun task
    assert (info.rank, info.world_size, info.is_distributed) == (0, 1, False)


def test_half_set_torchrun_names_missing():
    env = {k: TORCHRUN[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    with pytest.raises(ValueError, match=r"torchrun.*\['LOCAL_RANK', 'MASTER_PORT'\] missing"):
        read_env(env, resolve_host=no_scontrol)


def test_half_set_slurm_names_missing():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    with pytest.raises(ValueError, match=r"SLURM.*\['SLURM_LOCALID', 'SLURM_JOB_NODELIST'\] missing"):
        read_env(env, resolve_host=no_scontrol)


def test_slurm_without_port_source():
    env = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_ID"}
    with pytest.raises(ValueError, match="MASTER_PORT"):
        read_env(env, resolve_host=no_scontrol)


def test_bad_values():
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        read_env({**TORCHRUN, "RANK": "x"})
    with pytest.raises(ValueError, match="inconsistent torchrun"):
        read_env({**TORCHRUN, "RANK": "8"})


def test_init_without_launcher_initialises_nothing(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    import torch.distributed as dist

    info = init_distributed()
    assert not info.is_distributed and not dist.is_initialized()
    cleanup()  # a no-op without a group


def test_timeout_from_env():
    assert timeout_from_env({}) == DEFAULT_TIMEOUT_S == 600.0
    assert timeout_from_env({TIMEOUT_ENV: "42.5"}) == 42.5
    for bad in ("soon", "0", "-3", "inf"):
        with pytest.raises(ValueError, match=f"PARTIAL_FC_DIST_TIMEOUT_S='{bad}' must be a number of seconds > 0"):
            timeout_from_env({TIMEOUT_ENV: bad})


# Two torchrun-style ranks (the environment init_distributed reads); rank 1 then dies or freezes.
_PEER = """
import os, signal, sys, time
import torch, torch.distributed as dist
from partial_fc.comm.process_group import init_distributed
info = init_distributed()
dist.all_reduce(torch.ones(1))
if info.rank == 1:
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
t0 = time.monotonic()
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError as err:
    print(f"{time.monotonic() - t0:.2f} {err}".splitlines()[0], flush=True)
    os._exit(1)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_rank_whose_peer_is_gone_exits_within_the_timeout(how, tmp_path):
    """SIGKILL: the peer's sockets close and gloo fails at once, naming the peer's address.
    SIGSTOP (a frozen process, as a node whose network died): only the timeout ends the wait,
    5 s here through PARTIAL_FC_DIST_TIMEOUT_S."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from partial_fc.comm.local import free_port

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           TIMEOUT_ENV: "5", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _PEER, how], cwd=repo, stdout=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        out, _ = procs[0].communicate(timeout=120)  # start-up included; a hang would be the 600 s default or more
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1, out
    waited, message = out.split(" ", 1)
    if how == "SIGKILL":
        assert float(waited) < 5 and "127.0.0.1" in message and "peer" in message
    else:
        # gloo's own timer: 5 s, plus scheduling on a loaded machine
        assert 4.5 < float(waited) < 20 and "Timed out waiting 5000ms" in message
