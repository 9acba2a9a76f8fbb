"""Run a function on N local ranks (spawned processes, a real process group) and collect what
each returns. Used by the benchmarks and the distributed tests; training uses torchrun."""

from __future__ import annotations

import io
import os
import socket
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, backend: str, threads: int, fn: Callable, args: tuple, queue) -> None:
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        buffer = io.BytesIO()
        torch.save(result, buffer)  # plain bytes: no shared-memory handles that die with this process
        queue.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report any failure to the parent instead of hanging it
        queue.put((rank, "error", traceback.format_exc()))


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
              threads_per_rank: int = 1, timeout_s: float = 300.0) -> list[Any]:
    """``fn(rank, world_size, *args)`` on each of ``world_size`` ranks; returns results by rank.

    ``fn`` must be importable (module level) and return tensors or plain data. A failure on any
    rank raises here with that rank's traceback; a rank silent for ``timeout_s`` is an error.
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
    errors: list[str] = []
    try:
        for _ in range(world_size):
            rank, status, payload = queue.get(timeout=timeout_s)
            if status != "ok":
                errors.append(f"rank {rank}:\n{payload}")
                break
            results[rank] = torch.load(io.BytesIO(payload), weights_only=True)
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("distributed worker failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
