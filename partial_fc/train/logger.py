"""Rank-0 run logging: console lines, a JSONL metrics file, wandb when enabled.

Only rank 0 gets a ``RunLogger``; every other rank gets ``NullLogger`` with the same methods.
The wandb API key is read by wandb itself from WANDB_API_KEY; with no key the run is logged
offline into the run directory (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


class NullLogger:
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def info(self, line: str) -> None:
        pass

    def progress(self, step: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    def __init__(self, run_dir: str | Path, *, config: dict[str, Any], wandb_cfg: Any = None,
                 progress_bar: bool = True, stream=None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stream = stream or sys.stdout
        self.metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self.progress_bar = progress_bar and sys.stderr.isatty()
        self.wandb = _init_wandb(self.run_dir, config, wandb_cfg) if wandb_cfg is not None and wandb_cfg.enabled else None

    def info(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        self.metrics.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)

    def progress(self, step: int, total: int) -> None:
        if self.progress_bar:
            width = 30
            done = int(width * step / max(total, 1))
            print(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress_bar:
            print(file=sys.stderr)
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _init_wandb(run_dir: Path, config: dict[str, Any], cfg: Any):
    import wandb  # optional dependency: pip install 'partial-fc[wandb]'

    mode = cfg.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return wandb.init(project=cfg.project, name=cfg.name, dir=str(run_dir), config=config, mode=mode)


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
