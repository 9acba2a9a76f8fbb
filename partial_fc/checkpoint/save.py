"""Saving a checkpoint from every rank, complete or not at all.

Every rank writes into ``step-<N>.tmp-<token>/`` (rank 0 makes it and shares the token); an
all-gather of the file records is the barrier after which every file is on disk; rank 0 then
writes ``meta.json`` last, renames the directory to ``step-<N>`` and prunes old ones. Each step
runs under ``run_agreed``, so a failure on one rank is an error on every rank.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from partial_fc.checkpoint import layout
from partial_fc.checkpoint.files import fsync_dir, save_file, save_json
from partial_fc.checkpoint.head_state import default_device, head_payload, rows_per_class
from partial_fc.checkpoint.log import info
from partial_fc.checkpoint.meta import build_meta
from partial_fc.checkpoint.records import pack_records, unpack_records
from partial_fc.checkpoint.rng import capture_rng_state
from partial_fc.util.space import out_of_space
from partial_fc.checkpoint.trainer_state import TrainerState
from partial_fc.comm import Collectives
from partial_fc.comm.agree import run_agreed


def save_checkpoint(
    run_dir: str | Path, step: int, *, comm: Collectives, head: torch.nn.Module | None,
    head_optimizer: torch.optim.Optimizer | None, trainer_state: TrainerState | dict[str, Any] | None,
    rng: bool = True, meta_extra: dict[str, Any] | None = None, keep_last: int = 3, logger: Any = None,
    device: torch.device | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` from every rank; returns its path.

    Called on every rank with the same ``step``. ``trainer_state`` (a ``TrainerState``, or any
    plain data and tensors: backbone, optimizer, scheduler state dicts, data position...) is
    written by rank 0 only. ``meta_extra`` (JSON: model name/arch, config fingerprint) goes into
    meta.json and is compared on load. After the new checkpoint is complete, all but the newest
    ``keep_last`` are deleted. Collectives: five all-gathers of a few integers (the directory's
    token, the file records, and one after each of the three steps: see ``run_agreed``).

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
    if isinstance(trainer_state, TrainerState):
        trainer_state = trainer_state.to_dict()
    root, rank, step = layout.checkpoints_root(run_dir), comm.rank, int(step)
    device = default_device(head, device)
    rows = rows_per_class(head) if head is not None else None
    tmp = _make_tmp_dir(root, step, comm=comm, device=device)

    def write_files() -> dict[str, dict[str, Any]]:
        records = {}
        if head is not None:
            records[layout.head_file(rank)] = save_file(head_payload(head, head_optimizer), tmp / layout.head_file(rank),
                                                        what="head state")
        if rng:
            records[layout.rng_file(rank)] = save_file(capture_rng_state(), tmp / layout.rng_file(rank), what="rng state")
        if rank == 0:
            records[layout.TRAINER] = save_file(trainer_state or {}, tmp / layout.TRAINER, what="trainer_state")
        return records

    records = run_agreed(comm, write_files, what="writing checkpoint files", device=device)
    # the all-gather is the barrier after which every rank's files are on disk
    own = pack_records(records, rank=rank, class_range=tuple(head.class_range) if head is not None else (0, 0),
                       device=device)
    gathered = comm.all_gather(own).view(comm.world_size, -1).cpu()
    files, ranges = {}, []
    for r in range(comm.world_size):
        r_range, r_files = unpack_records(gathered[r], rank=r)
        files.update(r_files)
        ranges.append(r_range)
    if rank == 0:
        files[layout.TRAINER] = records[layout.TRAINER]

    def commit() -> None:
        meta = build_meta(step=step, world_size=comm.world_size, head=head, rows_per_class=rows,
                          class_ranges=ranges if head is not None else [], extra=meta_extra, rng=rng, files=files)
        save_json(meta, tmp / layout.META, what="meta.json")
        _rename_into_place(tmp, root / layout.step_dir_name(step))
        layout.prune(run_dir, keep_last=keep_last, step=step)

    run_agreed(comm, commit, what="committing the checkpoint", device=device, ranks=(0,))
    final = root / layout.step_dir_name(step)
    info(logger, comm, f"saved checkpoint {final} (world size {comm.world_size})")
    return final


def _make_tmp_dir(root: Path, step: int, *, comm: Collectives, device: torch.device) -> Path:
    """Rank 0 creates the directory; one all-gather shares its token and checks that every
    rank saves the same step."""
    def make() -> int:
        token = secrets.randbits(62)
        path = root / layout.tmp_dir_name(step, token)
        with out_of_space(path, what="the checkpoint directory"):
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        return token

    token = run_agreed(comm, make, what="creating the checkpoint directory", device=device, ranks=(0,))
    agreed = comm.all_gather(torch.tensor([token if comm.rank == 0 else 0, step], dtype=torch.int64, device=device))
    agreed = agreed.view(comm.world_size, 2).tolist()
    if any(s != step for _, s in agreed):
        raise ValueError(f"save_checkpoint called with different steps on the ranks: {[s for _, s in agreed]}")
    return root / layout.tmp_dir_name(step, agreed[0][0])


def _rename_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # saving the same step again (e.g. after a resume): replace it
        aside = final.parent / f"{final.name}.tmp-replaced-{secrets.token_hex(4)}"
        final.rename(aside)
        tmp.rename(final)
        shutil.rmtree(aside)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)
