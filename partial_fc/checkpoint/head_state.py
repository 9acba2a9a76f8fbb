"""The class-weight criterion's shard in ``head-rank<r>.pt``: saved per rank, read back at the
same world size or resharded to another.

A head is any module with ``weight`` (rows of its classes), ``class_range``, ``num_classes``,
``embedding_dim`` and optionally ``seed``: PartialFC and the NormFace agent modules alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from partial_fc.checkpoint.files import load_file
from partial_fc.checkpoint.layout import head_file
from partial_fc.checkpoint.optimizer_state import load_optimizer, optimizer_payload
from partial_fc.checkpoint.reshard import assemble_rows, check_ranges, overlaps


def rows_per_class(head: torch.nn.Module) -> int:
    start, stop = head.class_range
    rows = head.weight.shape[0]
    if rows % (stop - start):
        raise ValueError(f"head.weight has {rows} rows for {stop - start} classes: not a whole number of rows per class")
    return rows // (stop - start)


def default_device(head: torch.nn.Module | None, device: torch.device | None) -> torch.device:
    """Where the collectives' small tensors live: ``device``, else the head's, else the CPU."""
    if device is not None:
        return torch.device(device)
    return head.weight.device if head is not None else torch.device("cpu")


def head_payload(head: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    module_state = {k: v for k, v in head.state_dict().items() if k != "weight"}
    return {"class_range": list(head.class_range), "rows_per_class": rows_per_class(head),
            "weight": head.weight.detach(), "module_state": module_state,
            "optimizer": optimizer_payload(optimizer, head.weight) if optimizer is not None else None}


@dataclass(frozen=True)
class SavedShards:
    """The saved shards one rank reads: ``files[r]`` is saved rank r's payload (memory-mapped),
    ``pieces`` the (saved rank, lo, hi) parts of [start, stop) each holds, ``source`` the rank
    whose non-per-row state is taken (this rank at the same world size, else rank 0)."""

    files: dict[int, dict[str, Any]]
    ranges: list[tuple[int, int]]
    pieces: list[tuple[int, int, int]]
    source: int
    rows_per_class: int
    start: int
    stop: int

    def assemble(self, rows_of: Callable[[dict[str, Any]], torch.Tensor | None], *, like: torch.Tensor,
                 alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None) -> torch.Tensor:
        """Rows of [start, stop) of the per-row tensor that ``rows_of`` picks from a payload (None:
        zeros), in new memory or ``alloc``'s."""
        sources = [(lo, hi, self.ranges[r][0], rows_of(self.files[r])) for r, lo, hi in self.pieces]
        return assemble_rows(self.start, self.stop, rows_per_class=self.rows_per_class, sources=sources, like=like,
                             alloc=alloc)


def read_shards(path: Path, meta: dict[str, Any], *, class_range: tuple[int, int], source: int,
                verify: bool) -> SavedShards:
    start, stop = class_range
    ranges = check_ranges(meta["class_ranges"], meta["num_classes"])
    pieces = overlaps(ranges, start, stop)
    files = {}
    for r in sorted({r for r, _, _ in pieces} | {source}):
        name = head_file(r)
        # memory-mapped: a rank copies only the rows it owns out of a shard
        payload = load_file(path / name, meta["files"][name], verify=verify, mmap=True)
        if not isinstance(payload, dict) or list(payload.get("class_range", ())) != list(ranges[r]):
            raise ValueError(f"checkpoint file {path / name} does not hold classes {list(ranges[r])} as meta.json says")
        files[r] = payload
    return SavedShards(files=files, ranges=ranges, pieces=pieces, source=source,
                       rows_per_class=meta["rows_per_class"], start=start, stop=stop)


def load_head(path: Path, meta: dict[str, Any], *, rank: int, world_size: int, head: torch.nn.Module,
              optimizer: torch.optim.Optimizer | None, verify: bool, note: Callable[[str], None]) -> None:
    """This rank's rows of the weight (and of the optimizer's per-row state) from the shards that
    overlap ``head.class_range``; the head's other state from the source rank's file."""
    source = rank if meta["world_size"] == world_size else 0
    shards = read_shards(path, meta, class_range=tuple(head.class_range), source=source, verify=verify)
    like = shards.files[shards.pieces[0][0]]["weight"]
    into = None
    if hasattr(head.weight, "row_table") and like.dtype == head.weight.dtype:
        # an offloaded table (perhaps larger than RAM): the saved rows go straight into it
        into = lambda shape, dtype: head.weight.data  # noqa: E731 (same shape: assemble_rows checks coverage)
    weight = shards.assemble(lambda payload: payload["weight"], like=like, alloc=into)
    if weight.dtype != head.weight.dtype:  # saved with another head.state_dtype: load_state_dict casts
        how = "exactly" if head.weight.dtype in (torch.float32, torch.float64) else "rounded to nearest"
        note(f"checkpoint class weights are {_name(weight.dtype)}, this head stores {_name(head.weight.dtype)}: "
             f"converted ({how})")
    state = dict(shards.files[source]["module_state"])
    extra = state.get("_extra_state")
    if isinstance(extra, dict) and "class_range" in extra:  # the head's own: step etc., for our range
        saved_seed = extra.get("seed")
        if saved_seed is not None and saved_seed != getattr(head, "seed", saved_seed):
            note(f"checkpoint head seed {saved_seed} differs from this head's seed {head.seed}: "
                 f"sampling after the resume follows the new seed")
        state["_extra_state"] = {**extra, "class_range": list(head.class_range)}
    head.load_state_dict({**state, "weight": weight}, strict=True)
    if optimizer is not None:
        load_optimizer(optimizer, head.weight, shards, path=path)


def _name(dtype: torch.dtype) -> str:
    """The ``head.state_dtype`` name of a weight dtype (torch's own for any other)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
