"""Byte sizes as people write them: ``80GiB``, ``24G``, ``512MiB``, ``1.5TB``, ``1000000``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str | int) -> int:
    """``80GiB`` -> 85899345920. Bare K/M/G/T are binary (as GPU memory is quoted); KB/MB/GB/TB decimal."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"memory size {text!r} is not a number with a unit such as 80GiB, 24G, 512MiB or 1.5TB")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be > 0")
    return int(value)


def format_bytes(value: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"
