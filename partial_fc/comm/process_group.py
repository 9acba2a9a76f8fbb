"""Process-group set-up from torchrun's or SLURM's environment; nothing happens at import time.

    info = init_distributed()        # torchrun, srun, or a plain `python` (single process)
    ...
    cleanup()

Which environment is read:

- torchrun: any of RANK, WORLD_SIZE, LOCAL_RANK present -> all of them plus MASTER_ADDR and
  MASTER_PORT are required. This wins when both are present (srun launching torchrun).
- SLURM task (srun): any of SLURM_PROCID, SLURM_LOCALID present -> SLURM_PROCID, SLURM_NTASKS,
  SLURM_LOCALID, SLURM_JOB_NODELIST are required. MASTER_ADDR is the env value if set, else the
  first host of ``scontrol show hostnames``, else the first host parsed from the nodelist;
  MASTER_PORT is the env value if set, else derived from SLURM_JOB_ID.
- neither: one process, no process group. A bare allocation (salloc, or a batch script before
  srun) sets only job-level variables such as SLURM_JOB_NODELIST and counts as "neither".

How long a rank waits for its peers: every collective (and the rendezvous) gives up after
``PARTIAL_FC_DIST_TIMEOUT_S`` seconds, default 600 (10 min, torch's own default for NCCL; torch
gives gloo 30 min). A rank whose peer died then raises instead of waiting for ever. On gloo a
peer that dies on a live host closes its sockets and the survivors fail at their next
collective within a second ("Connection closed by peer [addr]:port"); the timeout is what ends
the wait when a whole node vanishes, or with NCCL, whose watchdog aborts the communicator
after the timeout. Raise it if rank 0 alone does something longer than that between two
collectives (building the tar index of a very large data set, a slow checkpoint file system).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")
_TORCHRUN_TRIGGERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # MASTER_* may be exported for srun too
_SLURM_TRIGGERS = ("SLURM_PROCID", "SLURM_LOCALID")  # task-level: set by srun, not by salloc
_PORT_BASE, _PORT_SPAN = 20000, 20000  # SLURM_JOB_ID -> [20000, 40000), below the ephemeral range
TIMEOUT_ENV = "PARTIAL_FC_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``source`` is "torchrun", "slurm" or "single"."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    source: str = "single"
    backend: str | None = None  # set once a process group is initialised

    @property
    def is_distributed(self) -> bool:
        return self.source != "single"

    @property
    def device(self) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is available, else cpu."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names, in order.

    ``node[01-03,07]`` -> node01 node02 node03 node07 (zero padding kept); ``gpu-a,gpu-b`` ->
    gpu-a gpu-b; several bracket groups in one name expand as a product
    (``r[1-2]-n[1-2]`` -> r1-n1 r1-n2 r2-n1 r2-n2).
    """
    hosts = [h for part in _split_top_level(nodelist.strip()) for h in _expand_one(part)]
    if not hosts:
        raise ValueError(f"SLURM nodelist {nodelist!r} names no host")
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"SLURM nodelist {text!r} has an unmatched ']'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"SLURM nodelist {text!r} has an unmatched '['")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_one(name: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", name)
    if match is None:
        return [name]
    prefix, suffix = name[: match.start()], name[match.end() :]
    out = []
    for item in match.group(1).split(","):
        for value in _expand_range(item, name):
            out.extend(_expand_one(prefix + value + suffix))
    return out


def _expand_range(item: str, name: str) -> list[str]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
    if m is None:
        raise ValueError(f"SLURM nodelist entry {name!r}: cannot read range {item!r}")
    lo, hi = m.group(1), m.group(2) or m.group(1)
    if int(hi) < int(lo):
        raise ValueError(f"SLURM nodelist entry {name!r}: range {item!r} runs backwards")
    return [str(v).zfill(len(lo)) for v in range(int(lo), int(hi) + 1)]


def port_from_job_id(job_id: str) -> int:
    """A port in [20000, 40000) from SLURM_JOB_ID, the same on every node of the job."""
    digits = re.sub(r"\D", "", job_id)  # array jobs: "1234_7"
    if not digits:
        raise ValueError(f"SLURM_JOB_ID {job_id!r} has no digits to derive MASTER_PORT from; set MASTER_PORT")
    return _PORT_BASE + int(digits) % _PORT_SPAN


def scontrol_first_host(nodelist: str) -> str | None:
    """First host of ``scontrol show hostnames NODELIST``; None when scontrol is absent or fails."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def read_env(env: Mapping[str, str], *,
             resolve_host: Callable[[str], str | None] = scontrol_first_host) -> DistInfo:
    """Pure parsing of a torchrun or SLURM environment (see the module docstring)."""
    if any(k in env for k in _TORCHRUN_TRIGGERS):
        _require(env, TORCHRUN_VARS, "torchrun")
        return _checked(DistInfo(
            rank=_int(env, "RANK"), world_size=_int(env, "WORLD_SIZE"), local_rank=_int(env, "LOCAL_RANK"),
            master_addr=env["MASTER_ADDR"], master_port=_int(env, "MASTER_PORT"), source="torchrun"))
    if any(k in env for k in _SLURM_TRIGGERS):
        _require(env, SLURM_VARS, "SLURM")
        nodelist = env["SLURM_JOB_NODELIST"]
        addr = env.get("MASTER_ADDR") or resolve_host(nodelist) or expand_nodelist(nodelist)[0]
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        elif "SLURM_JOB_ID" in env:
            port = port_from_job_id(env["SLURM_JOB_ID"])
        else:
            raise ValueError("SLURM environment has neither MASTER_PORT nor SLURM_JOB_ID; set MASTER_PORT")
        return _checked(DistInfo(
            rank=_int(env, "SLURM_PROCID"), world_size=_int(env, "SLURM_NTASKS"),
            local_rank=_int(env, "SLURM_LOCALID"), master_addr=addr, master_port=port, source="slurm"))
    return DistInfo()


def _require(env: Mapping[str, str], names: tuple[str, ...], launcher: str) -> None:
    missing = [k for k in names if k not in env]
    if missing:
        present = [k for k in names if k in env]
        raise ValueError(f"half-set {launcher} environment: {present} set but {missing} missing; "
                         f"set all of {list(names)} or none")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _checked(info: DistInfo) -> DistInfo:
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise ValueError(f"inconsistent {info.source} environment: rank {info.rank}, world size "
                         f"{info.world_size}, local rank {info.local_rank}")
    if not 0 < (info.master_port or 0) < 65536:
        raise ValueError(f"MASTER_PORT {info.master_port} is not a TCP port")
    return info


def timeout_from_env(env: Mapping[str, str]) -> float:
    """Seconds a collective may wait for its peers: PARTIAL_FC_DIST_TIMEOUT_S, else 600."""
    text = env.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"environment variable {TIMEOUT_ENV}={text!r} must be a number of seconds > 0")
    return value


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Initialise the default process group from the environment and return where we are.

    With neither a torchrun nor a SLURM task environment, returns a single-process ``DistInfo``
    and initialises nothing. ``backend`` defaults to nccl when CUDA is available, else gloo; with
    CUDA the current device is set to LOCAL_RANK before the group is created. ``timeout_s``
    (default: ``timeout_from_env``) bounds every collective's wait for a peer.
    """
    info = read_env(os.environ)
    timeout_s = timeout_from_env(os.environ) if timeout_s is None else timeout_s
    if not info.is_distributed:
        return info
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {info.local_rank} but only {torch.cuda.device_count()} CUDA devices visible")
        torch.cuda.set_device(info.local_rank)
    global _EVER_INITIALISED
    _EVER_INITIALISED = True
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{_host(info.master_addr)}:{info.master_port}",
                                rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(seconds=timeout_s))
    elif (dist.get_rank(), dist.get_world_size()) != (info.rank, info.world_size):
        raise ValueError(f"a process group is already initialised as rank {dist.get_rank()} of "
                         f"{dist.get_world_size()}, but the environment says {info.rank} of {info.world_size}")
    return DistInfo(**{**info.__dict__, "backend": dist.get_backend()})


_EVER_INITIALISED = False


def was_distributed() -> bool:
    """Whether this process has been a rank of a process group (``init_distributed``), even if
    the group is destroyed by now."""
    return _EVER_INITIALISED or (dist.is_available() and dist.is_initialized())


def _host(addr: str | None) -> str:
    return f"[{addr}]" if addr and ":" in addr else str(addr)  # bare IPv6 needs brackets in a URL


def cleanup(*, wait_for_all: bool = False) -> None:
    """Destroy the default process group if one exists; safe to call at any time.

    ``wait_for_all`` (after a successful run): a barrier first, so that the rank hosting the TCP
    store does not exit while another is still shutting down against it, which aborts that
    process ("terminate called without an active exception"). Never on an error path: a rank
    that failed alone would wait there forever instead of exiting and letting torchrun stop
    the job."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()
