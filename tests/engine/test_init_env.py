"""partial_fc.comm.init: environment parsing, with no processes started."""

from __future__ import annotations

import pytest

from partial_fc.comm.init import cleanup, expand_nodelist, init_distributed, port_from_job_id, read_env

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
