"""A checkpoint of C classes grown by N new ones: a new complete checkpoint of C + N classes.

    grow_checkpoint("runs/r50/checkpoints/step-3000", "runs/r50-plus", add=1000,
                    new_rows=lambda lo, hi: init_class_rows(seed, lo, hi, dim))   # row ids, not classes

The result is what ``save_checkpoint`` would have written for a head of C + N classes at
``world_size`` ranks (the saved one by default): one ``head-rank<r>.pt`` per rank with the
classes ``class_range(C + N, world_size, r)``, the old rows copied, the new ones from
``new_rows``, every per-row optimizer tensor of the new rows zero (for the lazy row-sparse
optimizers zero state is no state: their first update is that of a fresh row), the head's
module state (``step``, margin buffers, a learned scale) and the optimizer's other state and
hyper-parameters from saved rank 0, ``trainer.pt`` copied byte for byte, and ``meta.json`` with
``num_classes`` C + N and the size and SHA-256 of every file. RNG states are not carried (they
belong to the saving ranks): loading reseeds, as after any resharding. No process group.

Written like every checkpoint: into ``step-<N>.tmp-<token>/``, every file fsynced, ``meta.json``
last, then one rename to ``step-<N>``; on any error the temporary directory is removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from partial_fc.checkpoint import layout
from partial_fc.checkpoint.class_table import ClassTable, open_class_table
from partial_fc.checkpoint.files import fsync_dir, save_file, save_json, sha256_of
from partial_fc.util.space import out_of_space
from partial_fc.head.ranges import class_range

#: new_rows(lo, hi) -> rows [lo, hi) of the whole matrix (row ids: class c is rows [c K, (c + 1) K))
RowSource = Callable[[int, int], torch.Tensor]


def grow_checkpoint(
    source: str | Path, run_dir: str | Path, *, add: int, new_rows: RowSource, world_size: int | None = None,
    extra_updates: dict[str, Any] | None = None, verify: bool = True,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<N>`` (N: the source's step), the checkpoint ``source``
    with ``add`` new classes C .. C + add - 1; returns its path.

    ``extra_updates`` replace entries of ``meta.json``'s ``extra`` (a config fingerprint that
    counts the classes); an ``extra["num_classes"]`` entry (the trainer's fingerprint) becomes
    C + add by itself. ``grown_from`` records the source, C and ``add``. ``run_dir`` must hold
    no complete checkpoint yet, so that resuming it picks this one.
    """
    if not (isinstance(add, int) and add >= 1):
        raise ValueError(f"add must be an integer >= 1 (new classes), got {add!r}")
    table = open_class_table(source, verify=verify)  # every file's size and hash checked here
    meta, c_old = table.meta, table.num_classes
    c_new = c_old + add
    world = meta["world_size"] if world_size is None else world_size
    if not (isinstance(world, int) and 1 <= world <= c_new):
        raise ValueError(f"world_size must be an integer in [1, {c_new}] (every rank owns a class), got {world!r}")
    existing = layout.list_checkpoints(run_dir)
    if existing:
        raise ValueError(f"{existing[-1][1]} exists; expected a run directory without checkpoints for the grown one")
    trainer = table.path / layout.TRAINER
    if layout.TRAINER not in meta["files"]:
        raise ValueError(f"checkpoint file {table.path / layout.META} does not list {layout.TRAINER}")

    root = layout.checkpoints_root(run_dir)
    tmp = root / layout.tmp_dir_name(meta["step"], secrets.randbits(62))
    with out_of_space(tmp, what="the checkpoint directory"):
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    try:
        files, ranges = {}, []
        for rank in range(world):
            start, stop = class_range(c_new, world, rank)
            payload = _grown_payload(table, start, stop, num_classes=c_new, new_rows=new_rows)
            files[layout.head_file(rank)] = save_file(payload, tmp / layout.head_file(rank), what="head state")
            ranges.append([start, stop])
            del payload
        files[layout.TRAINER] = _copy_verified(trainer, tmp / layout.TRAINER, meta["files"][layout.TRAINER])
        extra = dict(meta["extra"])
        if "num_classes" in extra:
            extra["num_classes"] = c_new
        extra.update(extra_updates or {})
        extra["grown_from"] = {"checkpoint": str(table.path), "num_classes": c_old, "added": add}
        grown = {**meta, "world_size": world, "num_classes": c_new, "class_ranges": ranges, "extra": extra,
                 "rng": False, "torch_version": torch.__version__, "saved_unix_s": round(time.time(), 3),
                 "files": files}
        save_json(grown, tmp / layout.META, what="meta.json")
        final = root / layout.step_dir_name(meta["step"])
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _grown_payload(table: ClassTable, start: int, stop: int, *, num_classes: int,
                   new_rows: RowSource) -> dict[str, Any]:
    """``head-rank<r>.pt`` of classes [start, stop) of the grown head of ``num_classes``."""
    k, c_old = table.rows_per_class, table.num_classes
    old_hi, new_lo = min(stop, c_old), max(start, c_old)
    parts = [table.rows(start, old_hi)] if start < old_hi else []
    if new_lo < stop:
        parts.append(_checked_rows(new_rows(new_lo * k, stop * k), new_lo, stop, table))
    state = dict(table.payload(0)["module_state"])
    extra = state.get("_extra_state")
    if isinstance(extra, dict) and "class_range" in extra:  # the head's own: the step stays, the classes grow
        state["_extra_state"] = {**extra, "num_classes": num_classes, "class_range": [start, stop]}
    return {"class_range": [start, stop], "rows_per_class": k, "weight": torch.cat(parts), "module_state": state,
            "optimizer": _grown_optimizer(table, start, stop)}


def _checked_rows(rows: torch.Tensor, lo: int, hi: int, table: ClassTable) -> torch.Tensor:
    expected = ((hi - lo) * table.rows_per_class, table.embedding_dim)
    if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != expected:
        shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"new rows of classes [{lo}, {hi}) are {shape}; expected a tensor of shape {expected}")
    if not torch.isfinite(rows).all():
        raise ValueError(f"new rows of classes [{lo}, {hi}) are not all finite")
    # a compact (bf16/fp16) table stores new rows as a converted fp32 head would
    return rows.detach().to(device="cpu", dtype=table.dtype)


def _grown_optimizer(table: ClassTable, start: int, stop: int) -> dict[str, Any] | None:
    """Saved rank 0's optimizer entry with the weight's per-row tensors for classes [start, stop):
    old rows from the shards that hold them (zeros from a shard without that state), new rows zero."""
    saved = table.payload(0)["optimizer"]
    if saved is None:
        return None
    index = saved["weight_index"]
    payloads = [table.payload(r) for r in range(len(table.shards.ranges))]
    entries = [p["optimizer"] for p in payloads if p["optimizer"] is not None]
    if len(entries) != len(payloads):
        raise ValueError(f"checkpoint {table.path}: some head-rank<r>.pt files hold optimizer state and some none")
    per_row = list(dict.fromkeys(key for entry in entries for key in entry["per_row"]))
    weight_state: dict[str, Any] = {}
    for entry in entries:  # the non-per-row state (e.g. a step count) of the first shard that has any
        if index in entry["state"]:
            weight_state = {k: v for k, v in entry["state"][index].items() if k not in entry["per_row"]}
            break
    c_old, old_hi = table.num_classes, min(stop, table.num_classes)
    for key in per_row:
        like = next(e["state"][index][key] for e in entries if key in e["per_row"])
        def rows(payload: dict[str, Any], key: str = key) -> torch.Tensor | None:
            saved_rows = payload["optimizer"]
            return saved_rows["state"][index][key] if key in saved_rows["per_row"] else None

        parts = [table.part(start, old_hi).assemble(rows, like=like)] if start < old_hi else []
        new = (stop - max(start, c_old)) * table.rows_per_class
        if new > 0:
            parts.append(torch.zeros((new, *like.shape[1:]), dtype=like.dtype))
        weight_state[key] = torch.cat(parts)
    state = {i: entry for i, entry in saved["state"].items() if i != index}
    if weight_state:
        state[index] = weight_state
    return {**saved, "state": state, "per_row": sorted(per_row)}


def _copy_verified(src: Path, dst: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Copy ``src`` durably and check the copy against the source's record in meta.json."""
    with out_of_space(dst, what="trainer_state"):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    copied = {"size": dst.stat().st_size, "sha256": sha256_of(dst)}
    if copied != {"size": record["size"], "sha256": record["sha256"]}:
        raise ValueError(f"checkpoint file {src} does not match its size and SHA-256 in meta.json: it is corrupt")
    return copied
