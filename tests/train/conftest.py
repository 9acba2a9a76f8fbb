"""Fixtures of the trainer tests: a clean launcher environment and one tiny data set per module."""

from __future__ import annotations

import os

import pytest



@pytest.fixture(autouse=True)
def _single_process_environment(monkeypatch):
    """In-process runs must not see launcher variables (a SLURM allocation, a leaked LOCAL_RANK)."""
    for key in list(os.environ):
        if key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") or key.startswith("SLURM_"):
            monkeypatch.delenv(key)
