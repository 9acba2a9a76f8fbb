"""Loading a checkpoint on every rank: every check that needs no tensor first, then the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from partial_fc.checkpoint import layout
from partial_fc.checkpoint.files import check_present, load_file
from partial_fc.checkpoint.head_state import default_device, load_head, rows_per_class
from partial_fc.checkpoint.log import info
from partial_fc.checkpoint.meta import read_meta
from partial_fc.checkpoint.reshard import check_ranges
from partial_fc.checkpoint.rng import reseed, restore_rng_state
from partial_fc.comm import Collectives
from partial_fc.comm.agree import run_agreed
from partial_fc.head.ranges import class_range


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
    The trainer state is returned as saved (for the trainer's: ``TrainerState.from_dict``).
    """
    path, device = Path(path), default_device(head, device)
    if head is None and seed is None and restore_rng:
        raise ValueError("load_checkpoint without a head needs seed= (to reseed the RNGs at another world size)")
    meta = run_agreed(comm, lambda: _check_compatible(path, head, comm, expect_extra), what="checking the checkpoint",
                      device=device)

    def load() -> dict[str, Any]:
        trainer_state = load_file(path / layout.TRAINER, meta["files"][layout.TRAINER], verify=verify)
        if head is not None:
            load_head(path, meta, rank=comm.rank, world_size=comm.world_size, head=head, optimizer=head_optimizer,
                      verify=verify, note=lambda line: info(logger, comm, line))
        if restore_rng:
            _restore_rng(path, meta, comm, seed=head.seed if seed is None else seed, verify=verify, logger=logger)
        return trainer_state

    trainer_state = run_agreed(comm, load, what="loading the checkpoint", device=device)
    how = "same world size" if meta["world_size"] == comm.world_size else f"resharded from world size {meta['world_size']}"
    info(logger, comm, f"loaded checkpoint {path} at step {meta['step']} ({how})")
    return trainer_state


def _check_compatible(path: Path, head: torch.nn.Module | None, comm: Collectives,
                      expect_extra: dict[str, Any] | None) -> dict[str, Any]:
    meta = read_meta(path)
    if (head is None) != (meta["num_classes"] is None):
        theirs = "no class weights" if meta["num_classes"] is None else f"class weights for {meta['num_classes']} classes"
        ours = "has none (a loss without class weights)" if head is None else f"has a head of {head.num_classes} classes"
        raise ValueError(f"checkpoint {path} holds {theirs}, this run {ours}")
    for key, ours in (("num_classes", head.num_classes), ("embedding_dim", head.embedding_dim),
                      ("rows_per_class", rows_per_class(head))) if head is not None else ():
        if meta[key] != ours:
            raise ValueError(f"checkpoint {path} has {key}={meta[key]}, this head has {key}={ours}")
    for key, ours in (expect_extra or {}).items():
        if key not in meta["extra"] or meta["extra"][key] != ours:
            theirs = meta["extra"].get(key, "<absent>")
            raise ValueError(f"checkpoint {path} was saved with {key}={theirs!r}, this run has {key}={ours!r}")
    needed = [layout.TRAINER]
    if head is not None:
        expected = class_range(head.num_classes, comm.world_size, comm.rank)
        if tuple(head.class_range) != expected:
            raise ValueError(f"head.class_range {head.class_range} is not class_range(C, {comm.world_size}, {comm.rank}) = {expected}")
        check_ranges(meta["class_ranges"], meta["num_classes"])
        if len(meta["class_ranges"]) != meta["world_size"]:
            raise ValueError(f"checkpoint {path}: meta.json lists {len(meta['class_ranges'])} ranges for world size {meta['world_size']}")
        needed += [layout.head_file(r) for r in range(meta["world_size"])]
    needed += [layout.rng_file(r) for r in range(meta["world_size"])] if meta["rng"] else []
    for name in needed:
        if name not in meta["files"]:
            raise ValueError(f"checkpoint {path}: meta.json does not list {name}")
        check_present(path / name, meta["files"][name])
    return meta


def _restore_rng(path: Path, meta: dict[str, Any], comm: Collectives, *, seed: int, verify: bool, logger: Any) -> None:
    """This rank's saved RNG states at the same world size; otherwise (they belong to ranks that
    no longer exist) a reseed from (seed, step, rank) and a line saying so."""
    if meta["rng"] and meta["world_size"] == comm.world_size:
        name = layout.rng_file(comm.rank)
        for note in restore_rng_state(load_file(path / name, meta["files"][name], verify=verify)):
            info(logger, comm, note)
        return
    why = "holds no RNG states" if not meta["rng"] else f"was saved at world size {meta['world_size']}, this run has {comm.world_size}"
    info(logger, comm, f"checkpoint {why}: RNGs reseeded from (seed={seed}, step={meta['step']}, rank)")
    reseed(seed, meta["step"], comm.rank)
