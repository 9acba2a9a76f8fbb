"""Each rank's file records (size, SHA-256) and class range as one int64 row, so a single
all-gather tells rank 0 everything ``meta.json`` lists."""

from __future__ import annotations

from typing import Any

import torch

from partial_fc.checkpoint.layout import head_file, rng_file


def pack_records(records: dict[str, dict[str, Any]], *, rank: int, class_range: tuple[int, int],
                 device: torch.device) -> torch.Tensor:
    """[start, stop, head size, rng size (-1: none), 32 head hash bytes, 32 rng hash bytes]."""
    head = records.get(head_file(rank))
    rng = records.get(rng_file(rank))
    values = [*class_range, head["size"] if head else -1, rng["size"] if rng else -1]
    values += list(bytes.fromhex(head["sha256"]) if head else bytes(32))
    values += list(bytes.fromhex(rng["sha256"]) if rng else bytes(32))
    return torch.tensor(values, dtype=torch.int64, device=device)


def unpack_records(row: torch.Tensor, *, rank: int) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """([start, stop], {file name: record}) of rank ``rank`` from its gathered row."""
    values = row.tolist()
    start, stop, head_size, rng_size = values[:4]
    files = {}
    if head_size >= 0:
        files[head_file(rank)] = {"size": head_size, "sha256": bytes(values[4:36]).hex()}
    if rng_size >= 0:
        files[rng_file(rank)] = {"size": rng_size, "sha256": bytes(values[36:68]).hex()}
    return [start, stop], files
