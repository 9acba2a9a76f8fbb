"""All class rows of a checkpoint, read without a process group, from shards of any world size.

    table = open_class_table("runs/r50/checkpoints/step-3000")
    for lo, hi, rows in table.blocks(65536):      # rows of classes [lo, hi): ((hi - lo) K, D)
        ...

The saved shards are memory-mapped: a block copies only its own rows out of the files, so
reading a table of any size needs memory for one block. Every file is checked against its
size and SHA-256 in ``meta.json`` when the table is opened (``verify=False``: size only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from partial_fc.checkpoint.head_state import SavedShards, read_shards
from partial_fc.checkpoint.layout import head_file
from partial_fc.checkpoint.meta import read_meta
from partial_fc.checkpoint.reshard import check_ranges, overlaps


@dataclass(frozen=True)
class ClassTable:
    """The (C K, D) class-center matrix of checkpoint ``path`` (class c is rows [c K, (c + 1) K))."""

    path: Path
    meta: dict[str, Any]
    shards: SavedShards  # every saved rank's payload, memory-mapped

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def rows_per_class(self) -> int:
        return int(self.meta["rows_per_class"])

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @property
    def dtype(self) -> torch.dtype:
        return self.shards.files[0]["weight"].dtype

    def payload(self, rank: int) -> dict[str, Any]:
        """Saved rank ``rank``'s ``head-rank<r>.pt`` (memory-mapped)."""
        return self.shards.files[rank]

    def part(self, lo: int, hi: int) -> SavedShards:
        """The saved shards restricted to classes [lo, hi): ``.assemble`` copies any per-row tensor."""
        if not 0 <= lo < hi <= self.num_classes:
            raise ValueError(f"classes [{lo}, {hi}) are not inside [0, {self.num_classes}) of checkpoint {self.path}")
        return dataclasses.replace(self.shards, pieces=overlaps(self.shards.ranges, lo, hi), start=lo, stop=hi)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """A copy of the weight rows of classes [lo, hi), in the saved dtype."""
        return self.part(lo, hi).assemble(lambda payload: payload["weight"], like=self.payload(0)["weight"])

    def blocks(self, block_classes: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(lo, hi, rows of classes [lo, hi)) in order, ``block_classes`` classes at a time."""
        if block_classes < 1:
            raise ValueError(f"block_classes must be >= 1, got {block_classes}")
        for lo in range(0, self.num_classes, block_classes):
            hi = min(self.num_classes, lo + block_classes)
            yield lo, hi, self.rows(lo, hi)


def open_class_table(path: str | Path, *, verify: bool = True) -> ClassTable:
    """The class table of the complete checkpoint ``path`` (a ``step-<N>`` directory); ValueError
    naming the file for a checkpoint without class weights, a missing, truncated or corrupt
    shard, or a shard that does not hold the classes meta.json gives it."""
    path = Path(path)
    meta = read_meta(path)
    if meta["num_classes"] is None:
        raise ValueError(f"checkpoint {path} holds no class weights (its loss has none): expected head-rank<r>.pt files")
    ranges = check_ranges(meta["class_ranges"], meta["num_classes"])
    if len(ranges) != meta["world_size"]:
        raise ValueError(f"checkpoint file {path / 'meta.json'} lists {len(ranges)} class ranges for world size "
                         f"{meta['world_size']}; expected one per rank")
    for r in range(meta["world_size"]):
        if head_file(r) not in meta["files"]:
            raise ValueError(f"checkpoint file {path / 'meta.json'} does not list {head_file(r)}; expected one per rank")
    # all ranks at once, the way a process of a new world size reads the shards overlapping its range
    shards = read_shards(path, meta, class_range=(0, meta["num_classes"]), source=0, verify=verify)
    first = shards.files[0]["weight"]
    for r, (start, stop) in enumerate(ranges):
        weight = shards.files[r]["weight"]
        expected = ((stop - start) * meta["rows_per_class"], meta["embedding_dim"])
        if tuple(weight.shape) != expected or weight.dtype != first.dtype:
            raise ValueError(f"checkpoint file {path / head_file(r)} holds a {tuple(weight.shape)} {weight.dtype} weight; "
                             f"expected {expected} {first.dtype} for classes [{start}, {stop})")
    return ClassTable(path=path, meta=meta, shards=shards)
