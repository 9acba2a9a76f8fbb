"""Class tables outside device memory: ``head.offload`` host or mmap.

The whole table of a shard (the class rows and every optimizer-state tensor of them) lives off
the compute device; a training step brings only its sampled rows to the device and writes them
back after the optimizer step:

    stage (before or in the forward):  rows = table[ids]            host -> device
    forward + backward:                the head computes on ``rows`` (a leaf with a dense gradient)
    optimizer step:                    state rows host -> device, update, rows and state device -> host

- ``host``: the table is ordinary host memory, page-locked when CUDA is present (a pinned
  source is what lets the host-to-device copy run asynchronously).
- ``mmap``: the table is a file per tensor in ``directory``, mapped shared (``torch.from_file``)
  and unlinked at once: the page cache holds what is used and writes the rest back, so a table
  larger than RAM trains with a bounded anonymous resident set, and nothing is left on disk when
  the process ends, however it ends. The file's blocks are reserved first (``posix_fallocate``):
  a full disk is one line here, not a SIGBUS at the first write into a hole.

Sampling depends only on (seed, step, labels), so the rows of a step are known as soon as its
labels are: ``RowTable.prefetch`` starts the gather on a worker thread (the indexed read of the
host table releases the GIL) and, on CUDA, the copy on a side stream, while the caller runs the
backbone's forward; ``take`` waits for it. On a CPU device the rows are simply gathered.

fp32 results equal the in-memory head's bit for bit: the head sees the same row values in the
same order, the optimizer applies the same operations to the same values (row ids for the
stochastic rounding noise are the shard's, not the slice's), and the written-back rows are
copies. tests/head/test_offload.py holds this at world sizes 1-3.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

OFFLOADS = ("none", "host", "mmap")


def check_offload(offload: str) -> None:
    if offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {list(OFFLOADS)}, got {offload!r}")


@dataclass
class Staged:
    """One step's rows of the table on the compute device. ``ids``: (S,) local row ids on the
    device (sorted); ``ids_host`` the same on the host; ``rows``: (S, D) leaf whose gradient the
    backward fills."""

    ids: torch.Tensor
    ids_host: torch.Tensor
    rows: torch.Tensor


class RowTable:
    """Allocates a shard's table off the device and moves the rows of a step.

    ``mode``: host or mmap; ``device``: the compute device; ``directory``: where mmap files go
    (required for mmap); ``label``: names this table's files and errors (e.g. "rank 0").
    """

    def __init__(self, mode: str, *, device: torch.device | str, directory: str | Path | None = None,
                 label: str = "head", threaded: bool | None = None) -> None:
        check_offload(mode)
        if mode == "none":
            raise ValueError("a RowTable is for offload host or mmap; offload none keeps the table on the device")
        self.mode, self.device, self.label = mode, torch.device(device), label
        self.pin = self.mode == "host" and self.device.type == "cuda"
        self.directory = None
        if mode == "mmap":
            if directory is None:
                raise ValueError("offload mmap needs a directory for the table's files")
            self.directory = Path(directory)
            self.directory.mkdir(parents=True, exist_ok=True)
        self.bytes = 0  # allocated so far
        self._owned: set[int] = set()  # storage pointers of the tensors allocated here
        self.staged: Staged | None = None
        self._pending: tuple | None = None  # (key, ids, thread, result box) of a prefetch
        #: called after every transfer to the device (the bench's memory meter samples there)
        self.observer = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        #: prefetch on a worker thread (default: on CUDA, where it overlaps the backbone's kernels)
        self.threaded = self.device.type == "cuda" if threaded is None else threaded

    # -- allocation -----------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of the table (mmap: its bytes read as 0)."""
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if self.mode == "host":
            t = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        else:
            t = self._mapped(numel, nbytes, dtype).view(shape)
        self.bytes += nbytes
        self._owned.add(t.untyped_storage().data_ptr())
        return t

    def zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = self.empty(shape, dtype)
        return t if self.mode == "mmap" else t.zero_()  # a fresh file reads as zeros

    def owns(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self._owned

    def adopt(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in this table's memory: itself when it is already there, else a copy."""
        if self.owns(t):
            return t
        return self.empty(tuple(t.shape), t.dtype).copy_(t)

    def _mapped(self, numel: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
        fd, name = tempfile.mkstemp(prefix=f"partial-fc-table-{self.label.replace(' ', '')}-", suffix=".bin",
                                    dir=self.directory)
        try:
            if nbytes:
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except OSError as err:
                    free = shutil.disk_usage(self.directory).free
                    raise ValueError(
                        f"offload mmap: cannot reserve {_gib(nbytes)} for the class table of {self.label} in "
                        f"{self.directory} ({os.strerror(err.errno)}; {_gib(free)} free); set head.offload_dir "
                        f"to a file system with room (partial-fc plan --offload mmap gives the size)") from None
            return torch.from_file(name, shared=True, size=max(numel, 1), dtype=dtype)[:numel]
        finally:
            os.close(fd)
            os.unlink(name)  # the mapping keeps the blocks until the process ends; no file is left behind

    # -- the step's rows --------------------------------------------------------------------------
    def prefetch(self, table: torch.Tensor, ids: torch.Tensor, key: tuple) -> None:
        """Start gathering ``table[ids]`` for a later ``take`` with the same ``key`` (what the rows
        were sampled for, e.g. the step) and ids; returns at once when ``threaded``."""
        if not self.threaded:
            self._pending = (key, ids, None, [self._gather(table, ids)])
            return
        box: list = []

        def gather() -> None:
            try:
                box.append(self._gather(table, ids))
            except BaseException as err:  # handed to take(), which raises it in the caller's thread
                box.append(err)

        thread = threading.Thread(target=gather, daemon=True, name=f"partial-fc prefetch ({self.label})")
        thread.start()
        self._pending = (key, ids, thread, box)

    def take(self, table: torch.Tensor, ids: torch.Tensor, key: tuple) -> Staged:
        """The rows ``table[ids]`` on the device as a fresh leaf (the prefetched ones when their
        key and ids match), recorded as ``staged`` for the optimizer step."""
        pending, self._pending = self._pending, None
        result = None
        if pending is not None and pending[0] == key and torch.equal(pending[1], ids):
            _, _, thread, box = pending
            if thread is not None:
                thread.join()
            if isinstance(box[0], BaseException):
                raise RuntimeError(f"offload: the prefetch of {self.label}'s rows failed: {box[0]!r}") from box[0]
            result = box[0]
        if result is None:
            result = self._gather(table, ids)
        ids_host, rows, event = result
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
            rows.record_stream(torch.cuda.current_stream(self.device))
        leaf = rows.detach().requires_grad_(table.requires_grad)
        self.staged = Staged(ids=ids, ids_host=ids_host, rows=leaf)
        self._observe()
        return self.staged

    def _observe(self) -> None:
        if self.observer is not None:
            self.observer()

    def _gather(self, table: torch.Tensor, ids: torch.Tensor):
        """(host ids, rows on the device, CUDA event or None)."""
        ids_host = ids.cpu()
        host_rows = torch.index_select(table.detach(), 0, ids_host)
        if self.device.type != "cuda":
            return ids_host, host_rows.to(self.device), None
        if self.pin:
            host_rows = host_rows.pin_memory()
        with torch.cuda.stream(self._stream):
            rows = host_rows.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return ids_host, rows, event

    def fetch(self, t: torch.Tensor, ids_host: torch.Tensor) -> torch.Tensor:
        """``t[ids]`` of a state tensor of the table, on the device (synchronous)."""
        rows = torch.index_select(t, 0, ids_host).to(self.device)
        self._observe()
        return rows

    def write_back(self, t: torch.Tensor, ids_host: torch.Tensor, rows: torch.Tensor) -> None:
        """``t[ids] = rows``: the device rows copied to the host table."""
        t.index_copy_(0, ids_host, rows.detach().to("cpu"))

    def release(self) -> None:
        self.staged = None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"
