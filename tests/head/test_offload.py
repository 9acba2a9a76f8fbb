"""Offloaded class tables (``head.offload`` host / mmap) against the same head in memory.

The offloaded head computes on a copy of its sampled rows and the optimizer updates that copy
and writes it back; nothing in the arithmetic changes, so every mode must give the in-memory
results bit for bit: fp32 (the claim of head.offload), and also the compact modes, whose
stochastic rounding is keyed by the rows' ids in the shard, not in the staged copy. Checked at
world sizes 1, 2 and 3, with sampling (r < 1), momentum and weight decay, and with AdamW.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from partial_fc.comm import make_collectives
from partial_fc.head.offload import RowTable
from partial_fc.head.partial_fc import PartialFC
from partial_fc.optim.head_optimizer import HeadOptimizer
from tests.disk import small_disk

C, D, B, STEPS = 37, 16, 6, 5
MODES = [("fp32", "fp32", "sgd"), ("bf16", "int8", "sgd"), ("fp16", "bf16", "adamw"), ("fp32", "fp32", "adamw")]


def _train(rank: int, world_size: int, offload: str, state_dtype: str, optim_state: str, optim: str,
           directory: str | None, margin: str = "arcface", sample_rate: float = 0.4) -> dict:
    comm = make_collectives()
    head = PartialFC(C, D, margin=margin, sample_rate=sample_rate, seed=3, chunk_size=5, state_dtype=state_dtype,
                     offload=offload, offload_dir=None if directory is None else os.path.join(directory, str(rank)))
    start = head.class_range[0] * head.margin.subcenters
    opt = HeadOptimizer(sharded=[head.weight], name=optim, lr=0.1, comm=comm, momentum=0.9, weight_decay=5e-4,
                        optim_state=optim_state, seed=3, row_offset=start)
    gen = torch.Generator().manual_seed(7)
    losses = []
    for step in range(STEPS):
        x = torch.randn(world_size * B, D, generator=gen)[rank * B:(rank + 1) * B].requires_grad_()
        y = torch.randint(0, C, (world_size * B,), generator=gen)[rank * B:(rank + 1) * B]
        if step % 2:
            head.prefetch(y)  # every other step through the prefetch path
        loss = head(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    state = {k: v.clone() for k, v in opt.state[head.weight].items() if torch.is_tensor(v)}
    return {"weight": head.weight.detach().clone(), "losses": torch.stack(losses), "state": state}


def _equal(a: dict, b: dict) -> None:
    assert torch.equal(a["losses"], b["losses"])
    assert a["weight"].dtype == b["weight"].dtype and torch.equal(a["weight"], b["weight"])
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


def _all_modes(rank: int, world_size: int, directory: str) -> dict:
    """Every MODES x offload run of this rank, in one set of spawned ranks per world size."""
    return {(mode, offload): _train(rank, world_size, offload, *mode, directory)
            for mode in MODES for offload in ("none", "host", "mmap")}


def test_offloaded_tables_equal_the_in_memory_head_bit_for_bit_at_one_two_and_three_ranks():
    from partial_fc.comm.local import run_ranks

    with tempfile.TemporaryDirectory() as directory:
        runs = {n: [_all_modes(0, 1, directory)] if n == 1 else run_ranks(_all_modes, n, directory) for n in (1, 2, 3)}
        assert os.listdir(os.path.join(directory, "0")) == []  # mmap's files are unlinked at once
    for n, ranks in runs.items():
        for rank, results in enumerate(ranks):
            for mode in MODES:
                for offload in ("host", "mmap"):
                    _equal(results[(mode, "none")], results[(mode, offload)])
                # the steps did something: the rows moved
                assert not torch.equal(results[(mode, "mmap")]["weight"], _initial(n, rank, mode[0]))


def _initial(n: int, rank: int, state_dtype: str) -> torch.Tensor:
    from partial_fc.head.ranges import class_range

    start, stop = class_range(C, n, rank)
    return PartialFC(C, D, margin="arcface", seed=3, state_dtype=state_dtype).weight.detach()[start:stop]


def test_sub_centers_and_full_sampling_offload_the_same():
    """K = 3 rows per class (staged K at a time) and r = 1 (every row staged)."""
    with tempfile.TemporaryDirectory() as directory:
        for margin, rate in (("subcenter_arcface", 0.5), ("cosface", 1.0)):
            ref = _train(0, 1, "none", "fp32", "fp32", "sgd", None, margin=margin, sample_rate=rate)
            got = _train(0, 1, "mmap", "fp32", "fp32", "sgd", directory, margin=margin, sample_rate=rate)
            _equal(ref, got)


def test_the_table_and_its_state_live_in_the_mapped_files():
    with tempfile.TemporaryDirectory() as directory:
        head = PartialFC(1000, 32, margin="arcface", sample_rate=0.1, offload="mmap", offload_dir=directory)
        opt = HeadOptimizer(sharded=[head.weight], name="sgd", lr=0.1, comm=make_collectives(), momentum=0.9,
                            optim_state="int8")
        table = head.weight.row_table
        head(torch.randn(4, 32), torch.tensor([1, 2, 3, 999])).backward()
        opt.step()
        state = opt.state[head.weight]
        assert table.owns(head.weight) and all(table.owns(v) for v in state.values())
        assert table.bytes == 1000 * (32 * 4 + 32 + 4)  # weight fp32 + int8 momentum + its scale
        assert head.weight.device.type == "cpu" and table.staged is None  # released after the step
        assert head.weight.grad is None  # the gradient lived on the staged rows only


def test_a_full_disk_is_one_line_before_any_row_is_written(tmp_path):
    """posix_fallocate reserves the table's blocks: a file system without room refuses at
    construction (here a 1 MiB tmpfs), naming the size, the directory and the key to change."""
    with small_disk(tmp_path, 1024 * 1024) as small:
        with pytest.raises(ValueError, match=r"offload mmap: cannot reserve 0\.02 GiB .* in .*small .*head\.offload_dir"):
            PartialFC(10_000, 512, margin="arcface", offload="mmap", offload_dir=str(small))
        assert os.listdir(small) == []


def test_offload_errors():
    with pytest.raises(ValueError, match="offload must be one of"):
        PartialFC(10, 4, margin="arcface", offload="disk")
    with pytest.raises(ValueError, match="offload mmap needs a directory"):
        PartialFC(10, 4, margin="arcface", offload="mmap")
    with pytest.raises(ValueError, match="offload none keeps the table on the device"):
        RowTable("none", device="cpu")


def test_the_threaded_prefetch_gives_the_same_rows_and_surfaces_its_failure():
    """The worker-thread prefetch (the CUDA default) run on CPU: the same steps bit for bit as a
    synchronous gather; a gather that fails in the thread is an error in ``forward``, not a hang
    or a silent re-read."""
    def run(threaded: bool) -> dict:
        head = PartialFC(C, D, margin="arcface", sample_rate=0.4, seed=3, chunk_size=5, offload="host")
        head.weight.row_table.threaded = threaded
        opt = HeadOptimizer(sharded=[head.weight], name="sgd", lr=0.1, comm=make_collectives(), momentum=0.9)
        gen = torch.Generator().manual_seed(7)
        losses = []
        for _ in range(STEPS):
            x, y = torch.randn(B, D, generator=gen).requires_grad_(), torch.randint(0, C, (B,), generator=gen)
            head.prefetch(y)
            loss = head(x, y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return {"weight": head.weight.detach().clone(), "losses": torch.stack(losses),
                "state": {k: v.clone() for k, v in opt.state[head.weight].items()}}

    _equal(run(False), run(True))
    head = PartialFC(C, D, margin="arcface", sample_rate=0.4, offload="host")
    table = head.weight.row_table
    table.threaded = True
    y = torch.arange(B)
    table._gather = lambda t, ids: 1 / 0  # what a failing read does
    head.prefetch(y)
    with pytest.raises(RuntimeError, match="the prefetch of rank 0's rows failed"):
        head(torch.randn(B, D), y)
