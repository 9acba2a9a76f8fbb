"""A real small file system for full-disk tests: a tmpfs of a given size (root may mount one)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(parent: Path, size_bytes: int) -> Iterator[Path]:
    """A ``size_bytes`` tmpfs mounted at ``parent/small``, unmounted afterwards; a visible skip
    where it cannot be mounted (not root)."""
    mount = parent / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount)],
                          capture_output=True, text=True) if shutil.which("mount") else None
    if done is None or done.returncode != 0:
        pytest.skip(f"cannot mount a {size_bytes}-byte tmpfs here (needs root): "
                    f"{done.stderr.strip() if done else 'no mount command'}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
