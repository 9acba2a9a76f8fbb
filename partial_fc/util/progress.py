"""A small progress bar on stderr (no dependency): redrawn in place on a terminal, one line
every few seconds when stderr is a file or a pipe (CI logs stay readable)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, total: int | None, *, desc: str, unit: str = "img", stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.count = 0
        self.start = self._last = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval_s = 0.2 if self._tty else 10.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self._interval_s:
            self._last = now
            self._draw(now, final=False)

    def close(self, note: str = "") -> None:
        if self.enabled:
            self._draw(time.monotonic(), final=True, note=note)

    def _draw(self, now: float, *, final: bool, note: str = "") -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        if self.total:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 24)
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            text = f"{self.desc}: [{bar:<24}] {self.count}/{self.total} {frac:6.1%} {rate:,.0f} {self.unit}/s eta {eta:,.0f}s"
        else:
            text = f"{self.desc}: {self.count} {self.unit} {rate:,.0f} {self.unit}/s"
        if final:
            text = f"{self.desc}: {self.count} {self.unit} in {elapsed:,.1f}s ({rate:,.0f} {self.unit}/s){note}"
        end = "\n" if final or not self._tty else ""
        prefix = "\r\033[K" if self._tty else ""
        self.stream.write(prefix + text + end)
        self.stream.flush()
