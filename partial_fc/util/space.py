"""A write that runs out of room becomes one line saying so and where.

``torch.save`` reports a full disk as ``unexpected pos 110912 vs 110808``: its zip writer notices
the short write, and the ``OSError(ENOSPC)`` raised by the Python file object survives only as
the exception's context. So the cause is looked for along the whole exception chain.
"""

from __future__ import annotations

import errno
import os
import resource
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_WHY = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
        errno.EFBIG: "the file size limit is reached"}


@contextmanager
def out_of_space(path: Path, *, what: str | None = None, describe: str | None = None,
                 elsewhere: str = "write somewhere else") -> Iterator[None]:
    """Around the writing of ``path``: no space left (ENOSPC), quota exhausted (EDQUOT) or the
    process's file size limit reached (EFBIG) removes the partial file and raises a ValueError
    naming the file, the file system and its free space. Other errors pass unchanged.
    ``what``: a checkpoint file's part ("trainer_state"); ``describe``: the whole description of
    the file instead ("config file runs/x/config.yaml"); ``elsewhere``: the fix besides room."""
    path = Path(path)
    if describe is None:
        describe = f"checkpoint file {path} ({what})"
        elsewhere = "set run_dir to another file system"
    try:
        yield
    except (OSError, RuntimeError) as e:
        code = space_errno(e)
        if code is None:
            raise
        message = _message(path, describe, code, elsewhere)  # before the unlink: the free space when it failed
        try:
            path.unlink(missing_ok=True)  # give the room back to the rest of the run
        except OSError:
            pass
        raise ValueError(message) from e


def space_errno(error: BaseException | None) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when ``error`` or an exception in its chain is that OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WHY:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def mount_point(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _message(path: Path, where: str, code: int, elsewhere: str) -> str:
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return (f"{_WHY[code]} writing {where}: this process may write files of at most {_bytes(limit)} "
                f"(ulimit -f); raise the limit")
    mount = mount_point(path.parent)
    try:
        stats = os.statvfs(mount)
        free = f"{_bytes(stats.f_bavail * stats.f_frsize)} free"
    except OSError:
        free = "free space unknown"
    return f"{_WHY[code]} writing {where}: {free} on {mount}; make room there or {elsewhere}"


def _bytes(n: int) -> str:
    if n < 0 or n == resource.RLIM_INFINITY:
        return "unlimited"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"
