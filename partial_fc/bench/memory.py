"""Peak-memory meters for the benchmarks: the CUDA caching allocator's peak on GPU; on CPU the
kernel's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs, or with
``anonymous`` the largest anonymous resident set (RssAnon) seen at the ``sample()`` calls: a
memory-mapped table's pages are resident while used but belong to the page cache, which
evicts them under pressure, so they are not the process's peak. The kernel keeps no
high-water mark for RssAnon; sampling after each phase of a step sees the buffers that
persist across steps (workspaces, staged rows, gradients) and misses temporaries freed inside
a phase."""

from __future__ import annotations

import torch


class MemoryMeter:
    def __init__(self, device: torch.device, *, anonymous: bool = False) -> None:
        self.device = device
        self.anonymous = anonymous and device.type != "cuda"
        self._sampled = 0

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _status_kib("RssAnon" if self.anonymous else "VmRSS") * 1024

    def sample(self) -> None:
        """Note the anonymous resident set now (``anonymous`` meters; a no-op otherwise)."""
        if self.anonymous:
            self._sampled = max(self._sampled, self.current())

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.anonymous:
            self._sampled = self.current()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.anonymous:
            self.sample()
            return self._sampled
        return _status_kib("VmHWM") * 1024

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "CUDA allocator peak"
        return "anonymous resident set (sampled)" if self.anonymous else "resident-set high-water mark"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status; CPU memory measurement needs Linux")
