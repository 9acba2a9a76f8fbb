"""Where checkpoints live and which directories count as one.

``<run_dir>/checkpoints/step-<N>/`` is a checkpoint once it has that exact name and a
``meta.json``. Anything with ``.tmp`` in its name is work in progress (being written, replaced
or deleted) and is never read.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

META = "meta.json"
TRAINER = "trainer.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_OF_STEP = re.compile(r"^step-(\d+)\.tmp")


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{int(step)}"


def tmp_dir_name(step: int, token: int) -> str:
    """Where every rank writes step ``step`` before rank 0 renames it (``token``: 62 random bits)."""
    return f"{step_dir_name(step)}.tmp-{token:016x}"


def head_file(rank: int) -> str:
    return f"head-rank{rank}.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def step_of(name: str) -> int | None:
    """N for a directory named ``step-<N>``, else None."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def is_temporary(name: str) -> bool:
    return ".tmp" in name


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-<N>`` with a ``meta.json``), oldest first. Temporary
    directories (``.tmp`` in the name) and directories without ``meta.json`` are ignored."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(step, entry) for entry in root.iterdir() if (step := step_of(entry.name)) is not None]
    return sorted((step, entry) for step, entry in found if (entry / META).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune(run_dir: str | Path, *, keep_last: int, step: int) -> None:
    """Delete complete checkpoints older than the newest ``keep_last`` and leftover temporary
    directories of steps up to ``step``. A directory is renamed to ``.tmp`` before it is
    removed, so a reader never sees a half-deleted checkpoint."""
    root = checkpoints_root(run_dir)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        doomed = root / f"{old.name}.tmp-deleting-{secrets.token_hex(4)}"
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    for entry in root.iterdir():
        match = _TMP_OF_STEP.match(entry.name)
        if match and int(match.group(1)) <= step and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
