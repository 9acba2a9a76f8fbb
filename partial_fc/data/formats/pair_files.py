"""Read any verification-pair file by its suffix: the project's ``.pairs.npz`` or an
InsightFace ``.bin`` (through the restricted unpickler, see insightface_bin.py)."""

from __future__ import annotations

from pathlib import Path

from partial_fc.data.formats.insightface_bin import read_insightface_bin
from partial_fc.data.formats.pairs import PairSet, read_pairs_npz


def load_pairs(path: str | Path) -> PairSet:
    path = Path(path)
    if path.suffix == ".bin":
        return read_insightface_bin(path)
    if path.suffix == ".npz":
        return read_pairs_npz(path)
    raise ValueError(f"{path}: unknown pair file type {path.suffix!r}; expected .pairs.npz or an InsightFace .bin")
