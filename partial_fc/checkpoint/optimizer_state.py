"""The head optimizer's state in ``head-rank<r>.pt``, resharded with the class rows.

The saved entry is the optimizer's ``state_dict()`` (``state``, ``param_groups``) plus
``weight_index`` (the position of ``head.weight`` among its parameters) and ``per_row`` (the
names of the weight's state tensors whose first dimension is the shard's rows: momentum,
``exp_avg``...). Per-row tensors are resharded like the weight; everything else is taken from
one source rank's file.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from partial_fc.checkpoint.head_state import SavedShards


def optimizer_payload(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> dict[str, Any]:
    index = next((i for i, p in enumerate(_params(optimizer)) if p is weight), None)
    if index is None:
        raise ValueError("head_optimizer does not hold head.weight; pass the optimizer of the class centers")
    sd = optimizer.state_dict()
    rows = weight.shape[0]
    weight_state = sd["state"].get(index, {})
    per_row = sorted(k for k, v in weight_state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == rows)
    return {"state": sd["state"], "param_groups": sd["param_groups"], "weight_index": index, "per_row": per_row}


def load_optimizer(optimizer: torch.optim.Optimizer, weight: torch.Tensor, shards: SavedShards, *, path: Path) -> None:
    """Hyper-parameters and the state of the other (replicated) parameters from the source rank;
    the weight's per-row state assembled for this rank's rows, its other state from the first
    file that has any."""
    saved = shards.files[shards.source]["optimizer"]
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no head optimizer state; pass head_optimizer=None to load without it")
    params = _check_layout(optimizer, weight, saved)
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    index = saved["weight_index"]
    state: dict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    for i, entry in saved["state"].items():
        if i != index:
            state[params[i]] = _owned(entry, params[i].device)
    table = getattr(weight, "row_table", None)  # an offloaded table holds the rows' state too
    weight_state = {**_weight_scalars(shards, index, weight.device),
                    **_weight_rows(shards, index, weight.device, None if table is None else table.empty)}
    if weight_state:
        state[weight] = weight_state
    optimizer.state = state


def _weight_scalars(shards: SavedShards, index: int, device: torch.device) -> dict[str, Any]:
    """The weight's non-per-row state (e.g. a step count) from the source, else the first piece that has it."""
    for r in [shards.source] + [r for r, _, _ in shards.pieces]:
        saved = shards.files[r]["optimizer"]
        if saved is not None and index in saved["state"]:
            return _owned({k: v for k, v in saved["state"][index].items() if k not in saved["per_row"]}, device)
    return {}


def _weight_rows(shards: SavedShards, index: int, device: torch.device, alloc=None) -> dict[str, torch.Tensor]:
    """Every per-row state tensor any overlapping shard holds, for this rank's rows. A shard
    without it contributes zeros: for the lazy row-sparse optimizers zero state is no state."""
    def rows(payload: dict[str, Any], key: str) -> torch.Tensor | None:
        saved = payload["optimizer"]
        return saved["state"][index][key] if saved is not None and key in saved["per_row"] else None

    holders = [shards.files[r] for r, _, _ in shards.pieces]
    saved = [payload["optimizer"] for payload in holders if payload["optimizer"] is not None]
    keys = dict.fromkeys(key for entry in saved for key in entry["per_row"])  # in order of appearance
    out = {}
    for key in keys:
        like = next(t for payload in holders if (t := rows(payload, key)) is not None)
        out[key] = shards.assemble(partial(rows, key=key), like=like, alloc=alloc).to(device)
    return out


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _check_layout(optimizer: torch.optim.Optimizer, weight: torch.Tensor, saved: dict[str, Any]) -> list[torch.Tensor]:
    """The optimizer's parameters, after checking they are laid out as in the checkpoint."""
    ours, theirs = [len(g["params"]) for g in optimizer.param_groups], [len(g["params"]) for g in saved["param_groups"]]
    if ours != theirs:
        raise ValueError(f"head_optimizer has param groups of sizes {ours}, the checkpoint {theirs}")
    params = _params(optimizer)
    if params[saved["weight_index"]] is not weight:
        position = next((i for i, p in enumerate(params) if p is weight), None)
        raise ValueError(f"head_optimizer holds head.weight at position {position}, the checkpoint at {saved['weight_index']}")
    return params


def _owned(entry: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of our own (not the memory-mapped file's) on ``device``; plain data as is."""
    return {key: value.to(device=device, copy=True) if isinstance(value, torch.Tensor) else value
            for key, value in entry.items()}
