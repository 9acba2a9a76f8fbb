"""Peak-memory meters for the benchmarks: the CUDA caching allocator's peak on GPU; on CPU the
kernel's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs."""

from __future__ import annotations

import torch


class MemoryMeter:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _status_kib("VmHWM") * 1024

    @property
    def kind(self) -> str:
        return "CUDA allocator peak" if self.device.type == "cuda" else "resident-set high-water mark"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status; CPU memory measurement needs Linux")
