"""Checkpoints that resume exactly at the same world size and reshard the head to another.

Layout (see docs/checkpoints.md): ``<run_dir>/checkpoints/step-<N>/`` holding ``meta.json``,
``trainer.pt`` (rank 0), ``head-rank<r>.pt`` and ``rng-rank<r>.pt`` per rank. A directory is a
checkpoint only once it has that name and a ``meta.json``: everything is written into
``step-<N>.tmp-<token>/``, rank 0 writes ``meta.json`` last and renames the directory.
Every file loads with ``torch.load(weights_only=True)``; nothing else is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

from partial_fc.comm import Collectives
from partial_fc.head.ranges import class_range
from partial_fc.train.checkpoint_files import check_present, load_file, save_file
from partial_fc.train.reshard import assemble_rows, check_ranges, overlaps
from partial_fc.train.rng import capture_rng_state, reseed, restore_rng_state

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- finding


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-<N>`` with a ``meta.json``), oldest first. Temporary
    directories (``.tmp`` in the name) and directories without ``meta.json`` are ignored."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / "meta.json").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a complete checkpoint; ValueError for a missing, temporary or incomplete one."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    if ".tmp" in path.name:
        raise ValueError(f"{path} is an unfinished checkpoint (temporary directory); use a step-<N> directory")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"checkpoint {path} is incomplete: it has no meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint file {meta_path} is corrupt: {e}") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"checkpoint {path} has format_version {version!r}; this code reads {FORMAT_VERSION}")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint file {meta_path} lacks {missing}")
    return meta


_META_KEYS = ("step", "world_size", "num_classes", "embedding_dim", "rows_per_class", "class_ranges", "extra", "files", "rng")


# ------------------------------------------------------------------------------------------ saving


def save_checkpoint(
    run_dir: str | Path, step: int, *, comm: Collectives, head: torch.nn.Module | None,
    head_optimizer: torch.optim.Optimizer | None, trainer_state: dict[str, Any] | None, rng: bool = True,
    meta_extra: dict[str, Any] | None = None, keep_last: int = 3, logger: Any = None,
    device: torch.device | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` from every rank; returns its path.

    Called on every rank with the same ``step``. ``trainer_state`` (plain data and tensors: backbone,
    backbone optimizer, LR scheduler and grad-scaler state dicts, data position...) is written by
    rank 0 only. ``meta_extra`` (JSON: model name/arch, config fingerprint) goes into meta.json
    and is compared on load. After the new checkpoint is complete, all but the newest
    ``keep_last`` are deleted. Collectives: three all-gathers of a few integers.

    ``head`` None (a loss without class weights, e.g. the triplet loss): no head files; meta.json
    records ``num_classes`` null. ``device`` is where the collectives' small tensors live
    (default: the head's device; required for NCCL when there is no head).
    """
    if not (isinstance(keep_last, int) and keep_last >= 1):
        raise ValueError(f"keep_last must be an integer >= 1, got {keep_last!r}")
    meta_extra = dict(meta_extra or {})
    try:
        json.dumps(meta_extra)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta_extra must be JSON data (str, numbers, lists, dicts): {e}") from e
    root, rank = checkpoints_root(run_dir), comm.rank
    device = _device(head, device)
    start, stop = head.class_range if head is not None else (0, 0)
    rows_per_class = _rows_per_class(head) if head is not None else None

    def make_tmp() -> int:
        token = secrets.randbits(62)
        root.mkdir(parents=True, exist_ok=True)
        (root / f"step-{int(step)}.tmp-{token:016x}").mkdir()
        return token

    token = _run_on(comm, device, make_tmp, ranks=(0,), what="creating the checkpoint directory")
    agreed = comm.all_gather(torch.tensor([token if rank == 0 else 0, int(step)], dtype=torch.int64, device=device))
    agreed = agreed.view(comm.world_size, 2).tolist()
    if any(s != int(step) for _, s in agreed):
        raise ValueError(f"save_checkpoint called with different steps on the ranks: {[s for _, s in agreed]}")
    tmp = root / f"step-{int(step)}.tmp-{agreed[0][0]:016x}"

    def write_files() -> dict[str, dict[str, Any]]:
        records = {}
        if head is not None:
            records[f"head-rank{rank}.pt"] = save_file(_head_payload(head, head_optimizer, rows_per_class),
                                                       tmp / f"head-rank{rank}.pt", what="head state")
        if rng:
            records[f"rng-rank{rank}.pt"] = save_file(capture_rng_state(), tmp / f"rng-rank{rank}.pt", what="rng state")
        if rank == 0:
            records["trainer.pt"] = save_file(trainer_state or {}, tmp / "trainer.pt", what="trainer_state")
        return records

    records = _run_on(comm, device, write_files, what="writing checkpoint files")
    # the all-gather is the barrier after which every rank's files are on disk
    gathered = comm.all_gather(_pack_records(records, rank, start, stop, device)).view(comm.world_size, -1).cpu()
    files, ranges = {}, []
    for r in range(comm.world_size):
        r_start, r_stop, r_files = _unpack_records(gathered[r], r)
        files.update(r_files)
        ranges.append([r_start, r_stop])
    if head is None:
        ranges = []
    if rank == 0:
        files["trainer.pt"] = records["trainer.pt"]

    def commit() -> None:
        meta = {
            "format_version": FORMAT_VERSION, "step": int(step), "world_size": comm.world_size,
            "num_classes": head.num_classes if head is not None else None,
            "embedding_dim": head.embedding_dim if head is not None else None, "rows_per_class": rows_per_class,
            "subcenters": rows_per_class if rows_per_class and rows_per_class > 1 else None, "class_ranges": ranges,
            "head_seed": getattr(head, "seed", None), "extra": meta_extra, "rng": bool(rng),
            "torch_version": torch.__version__, "saved_unix_s": round(time.time(), 3), "files": files,
        }
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        final = root / f"step-{int(step)}"
        if final.exists():  # saving the same step again (e.g. after a resume): replace it
            aside = root / f"step-{int(step)}.tmp-replaced-{secrets.token_hex(4)}"
            final.rename(aside)
            tmp.rename(final)
            shutil.rmtree(aside)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        _prune(root, keep_last, int(step))

    _run_on(comm, device, commit, ranks=(0,), what="committing the checkpoint")
    _info(logger, comm, f"saved checkpoint {root / f'step-{int(step)}'} (world size {comm.world_size})")
    return root / f"step-{int(step)}"


def _head_payload(head: torch.nn.Module, optimizer: torch.optim.Optimizer | None, rows_per_class: int) -> dict[str, Any]:
    module_state = {k: v for k, v in head.state_dict().items() if k != "weight"}
    payload = {"class_range": list(head.class_range), "rows_per_class": rows_per_class,
               "weight": head.weight.detach(), "module_state": module_state, "optimizer": None}
    if optimizer is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        index = next((i for i, p in enumerate(params) if p is head.weight), None)
        if index is None:
            raise ValueError("head_optimizer does not hold head.weight; pass the optimizer of the class centers")
        sd = optimizer.state_dict()
        rows = head.weight.shape[0]
        weight_state = sd["state"].get(index, {})
        per_row = sorted(k for k, v in weight_state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == rows)
        payload["optimizer"] = {"state": sd["state"], "param_groups": sd["param_groups"], "weight_index": index, "per_row": per_row}
    return payload


def _pack_records(records: dict[str, dict[str, Any]], rank: int, start: int, stop: int, device) -> torch.Tensor:
    """[start, stop, head size, rng size (-1: none), 32 head hash bytes, 32 rng hash bytes]."""
    head = records.get(f"head-rank{rank}.pt")
    rng = records.get(f"rng-rank{rank}.pt")
    values = [start, stop, head["size"] if head else -1, rng["size"] if rng else -1]
    values += list(bytes.fromhex(head["sha256"]) if head else bytes(32))
    values += list(bytes.fromhex(rng["sha256"]) if rng else bytes(32))
    return torch.tensor(values, dtype=torch.int64, device=device)


def _unpack_records(row: torch.Tensor, rank: int) -> tuple[int, int, dict[str, dict[str, Any]]]:
    values = row.tolist()
    start, stop, head_size, rng_size = values[:4]
    files = {}
    if head_size >= 0:
        files[f"head-rank{rank}.pt"] = {"size": head_size, "sha256": bytes(values[4:36]).hex()}
    if rng_size >= 0:
        files[f"rng-rank{rank}.pt"] = {"size": rng_size, "sha256": bytes(values[36:68]).hex()}
    return start, stop, files


def _prune(root: Path, keep_last: int, step: int) -> None:
    """Delete complete checkpoints older than the newest ``keep_last`` and leftover temporary
    directories of steps up to ``step``. A directory is renamed to ``.tmp`` before it is
    removed, so a reader never sees a half-deleted checkpoint."""
    complete = sorted((int(m.group(1)), e) for e in root.iterdir() if (m := _STEP_DIR.match(e.name)) and (e / "meta.json").is_file())
    for _, old in complete[:-keep_last]:
        doomed = root / f"{old.name}.tmp-deleting-{secrets.token_hex(4)}"
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    for entry in root.iterdir():
        match = re.match(r"^step-(\d+)\.tmp", entry.name)
        if match and int(match.group(1)) <= step and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


# ----------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | Path, *, comm: Collectives, head: torch.nn.Module | None, head_optimizer: torch.optim.Optimizer | None,
    expect_extra: dict[str, Any] | None = None, restore_rng: bool = True, seed: int | None = None,
    verify: bool = True, logger: Any = None, device: torch.device | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``head`` (and ``head_optimizer``) on every rank; returns the trainer state.

    At the checkpoint's world size everything is restored exactly, RNG states included. At
    another world size each rank assembles its classes' rows of the weight and of every per-row
    optimizer state tensor from the saved shards that overlap ``head.class_range``; the head's
    other state (``step``) and the optimizer's scalar state and hyper-parameters come from rank
    0's file; RNGs are reseeded from (``seed`` or ``head.seed``, step, rank) and a line says so.
    ``expect_extra``: entries that must equal those of the saved ``meta_extra`` (arch, config
    fingerprint). Checks that need no reading (meta.json, sizes, shapes, fingerprints) run before
    any tensor is loaded; ``verify`` also checks every file read against its SHA-256. Every
    failure is a ValueError on every rank. Collectives: two all-gathers of one integer.
    ``head`` None: for a checkpoint saved without class weights (``seed`` is then required).
    """
    path, device = Path(path), _device(head, device)
    if head is None and seed is None and restore_rng:
        raise ValueError("load_checkpoint without a head needs seed= (to reseed the RNGs at another world size)")
    meta = _run_on(comm, device, lambda: _check_compatible(path, head, comm, expect_extra), what="checking the checkpoint")
    same_world = meta["world_size"] == comm.world_size

    def load() -> dict[str, Any]:
        trainer_state = load_file(path / "trainer.pt", meta["files"]["trainer.pt"], verify=verify)
        if head is not None:
            _load_head(path, meta, comm, head, head_optimizer, verify=verify, logger=logger)
        if restore_rng:
            _restore_rng(path, meta, comm, seed=head.seed if seed is None else seed, verify=verify, logger=logger)
        return trainer_state

    trainer_state = _run_on(comm, device, load, what="loading the checkpoint")
    how = "same world size" if same_world else f"resharded from world size {meta['world_size']}"
    _info(logger, comm, f"loaded checkpoint {path} at step {meta['step']} ({how})")
    return trainer_state


def _check_compatible(path: Path, head: torch.nn.Module, comm: Collectives, expect_extra: dict[str, Any] | None) -> dict[str, Any]:
    meta = read_meta(path)
    if (head is None) != (meta["num_classes"] is None):
        theirs = "no class weights" if meta["num_classes"] is None else f"class weights for {meta['num_classes']} classes"
        ours = "has none (a loss without class weights)" if head is None else f"has a head of {head.num_classes} classes"
        raise ValueError(f"checkpoint {path} holds {theirs}, this run {ours}")
    for key, ours in (("num_classes", head.num_classes), ("embedding_dim", head.embedding_dim),
                      ("rows_per_class", _rows_per_class(head))) if head is not None else ():
        if meta[key] != ours:
            raise ValueError(f"checkpoint {path} has {key}={meta[key]}, this head has {key}={ours}")
    for key, ours in (expect_extra or {}).items():
        if key not in meta["extra"] or meta["extra"][key] != ours:
            theirs = meta["extra"].get(key, "<absent>")
            raise ValueError(f"checkpoint {path} was saved with {key}={theirs!r}, this run has {key}={ours!r}")
    needed = ["trainer.pt"]
    if head is not None:
        expected = class_range(head.num_classes, comm.world_size, comm.rank)
        if tuple(head.class_range) != expected:
            raise ValueError(f"head.class_range {head.class_range} is not class_range(C, {comm.world_size}, {comm.rank}) = {expected}")
        check_ranges(meta["class_ranges"], meta["num_classes"])
        if len(meta["class_ranges"]) != meta["world_size"]:
            raise ValueError(f"checkpoint {path}: meta.json lists {len(meta['class_ranges'])} ranges for world size {meta['world_size']}")
        needed += [f"head-rank{r}.pt" for r in range(meta["world_size"])]
    needed += [f"rng-rank{r}.pt" for r in range(meta["world_size"])] if meta["rng"] else []
    for name in needed:
        if name not in meta["files"]:
            raise ValueError(f"checkpoint {path}: meta.json does not list {name}")
        check_present(path / name, meta["files"][name])
    return meta


def _load_head(path: Path, meta: dict[str, Any], comm: Collectives, head: torch.nn.Module,
               optimizer: torch.optim.Optimizer | None, *, verify: bool, logger: Any) -> None:
    start, stop = head.class_range
    ranges = check_ranges(meta["class_ranges"], meta["num_classes"])
    pieces = overlaps(ranges, start, stop)
    source = comm.rank if meta["world_size"] == comm.world_size else 0
    shards = {}
    for r in sorted({r for r, _, _ in pieces} | {source}):
        name = f"head-rank{r}.pt"
        # memory-mapped: a rank copies only the rows it owns out of a shard
        shard = load_file(path / name, meta["files"][name], verify=verify, mmap=True)
        if not isinstance(shard, dict) or list(shard.get("class_range", ())) != list(ranges[r]):
            raise ValueError(f"checkpoint file {path / name} does not hold classes {list(ranges[r])} as meta.json says")
        shards[r] = shard
    k = meta["rows_per_class"]
    first = shards[pieces[0][0]]["weight"]
    weight = assemble_rows(start, stop, rows_per_class=k, like=first,
                           sources=[(lo, hi, ranges[r][0], shards[r]["weight"]) for r, lo, hi in pieces])
    state = dict(shards[source]["module_state"])
    extra = state.get("_extra_state")
    if isinstance(extra, dict) and "class_range" in extra:  # the head's own: step etc., for our range
        saved_seed = extra.get("seed")
        if saved_seed is not None and saved_seed != getattr(head, "seed", saved_seed):
            _info(logger, comm, f"checkpoint head seed {saved_seed} differs from this head's seed {head.seed}: "
                                f"sampling after the resume follows the new seed")
        state["_extra_state"] = {**extra, "class_range": list(head.class_range)}
    state["weight"] = weight
    if weight.dtype != head.weight.dtype:
        raise ValueError(f"checkpoint weight is {weight.dtype}, this head's is {head.weight.dtype}")
    head.load_state_dict(state, strict=True)
    if optimizer is not None:
        _load_optimizer(path, optimizer, head.weight, shards, source, pieces, ranges, k, start, stop)


def _load_optimizer(path, optimizer, weight, shards, source, pieces, ranges, k, start, stop) -> None:
    saved = shards[source]["optimizer"]
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no head optimizer state; pass head_optimizer=None to load without it")
    groups = optimizer.param_groups
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in saved["param_groups"]]:
        raise ValueError(f"head_optimizer has param groups of sizes {[len(g['params']) for g in groups]}, the checkpoint "
                         f"{[len(g['params']) for g in saved['param_groups']]}")
    params = [p for g in groups for p in g["params"]]
    index = saved["weight_index"]
    if params[index] is not weight:
        raise ValueError(f"head_optimizer holds head.weight at position {params.index(weight) if weight in params else None}, "
                         f"the checkpoint at {index}")
    for group, saved_group in zip(groups, saved["param_groups"]):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    state: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    for i, entry in saved["state"].items():
        if i != index:  # parameters other than the shard are replicated: take the source rank's
            state[params[i]] = {key: _own(v, params[i].device) for key, v in entry.items()}
    # the shard's state: per-row tensors assembled from the overlapping shards, the rest from the source
    per_row: dict[str, torch.Tensor] = {}
    for r, _, _ in pieces:
        opt = shards[r]["optimizer"]
        for key in opt["per_row"] if opt is not None else ():
            per_row.setdefault(key, opt["state"][index][key])
    weight_state = {}
    for r in [source] + [r for r, _, _ in pieces]:
        opt = shards[r]["optimizer"]
        if opt is not None and index in opt["state"]:
            weight_state = {key: _own(v, weight.device) for key, v in opt["state"][index].items() if key not in opt["per_row"]}
            break
    for key, like in per_row.items():
        sources = []
        for r, lo, hi in pieces:
            opt = shards[r]["optimizer"]
            tensor = opt["state"][index][key] if opt is not None and key in opt["per_row"] else None
            sources.append((lo, hi, ranges[r][0], tensor))
        weight_state[key] = assemble_rows(start, stop, rows_per_class=k, sources=sources, like=like).to(weight.device)
    if weight_state:
        state[weight] = weight_state
    optimizer.state = state


def _own(value: Any, device: torch.device) -> Any:
    """A tensor of our own (not the memory-mapped file's) on ``device``; plain data as is."""
    return value.to(device=device, copy=True) if isinstance(value, torch.Tensor) else value


def restore_rng(path: str | Path, *, comm: Collectives, seed: int, verify: bool = True, logger: Any = None) -> bool:
    """Restore this rank's RNG states from the checkpoint when it was saved at this world size
    (returns True); otherwise reseed from (seed, step, rank), log a line, return False."""
    path = Path(path)
    return _restore_rng(path, read_meta(path), comm, seed=seed, verify=verify, logger=logger)


def _restore_rng(path: Path, meta: dict[str, Any], comm: Collectives, *, seed: int, verify: bool, logger: Any) -> bool:
    if meta["rng"] and meta["world_size"] == comm.world_size:
        name = f"rng-rank{comm.rank}.pt"
        for note in restore_rng_state(load_file(path / name, meta["files"][name], verify=verify)):
            _info(logger, comm, note)
        return True
    why = "holds no RNG states" if not meta["rng"] else f"was saved at world size {meta['world_size']}, this run has {comm.world_size}"
    _info(logger, comm, f"checkpoint {why}: RNGs reseeded from (seed={seed}, step={meta['step']}, rank)")
    reseed(seed, meta["step"], comm.rank)
    return False


# ----------------------------------------------------------------------------------------- helpers


def _device(head: torch.nn.Module | None, device: torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return head.weight.device if head is not None else torch.device("cpu")


def _rows_per_class(head: torch.nn.Module) -> int:
    start, stop = head.class_range
    rows = head.weight.shape[0]
    if rows % (stop - start):
        raise ValueError(f"head.weight has {rows} rows for {stop - start} classes: not a whole number of rows per class")
    return rows // (stop - start)


def _run_on(comm: Collectives, device, fn: Callable[[], Any], *, what: str, ranks: tuple[int, ...] | None = None) -> Any:
    """Run ``fn`` on ``ranks`` (all by default) and agree on success with one all-gather, so a
    failure on one rank raises on every rank instead of leaving the others waiting."""
    result, error = None, None
    if ranks is None or comm.rank in ranks:
        try:
            result = fn()
        except Exception as e:  # re-raised below, after the other ranks know
            error = e
    flags = comm.all_gather(torch.tensor([error is not None], dtype=torch.int64, device=device)).tolist()
    if error is not None:
        if isinstance(error, ValueError):
            raise error
        raise ValueError(f"{what} failed on rank {comm.rank}: {type(error).__name__}: {error}") from error
    failed = [r for r, bad in enumerate(flags) if bad]
    if failed:
        raise ValueError(f"{what} failed on rank(s) {failed}; see their error")
    return result


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _info(logger: Any, comm: Collectives, line: str) -> None:
    if comm.rank == 0:
        (logger.info if logger is not None else _log.info)(line)
