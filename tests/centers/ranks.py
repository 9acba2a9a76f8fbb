"""Rank functions (spawned on real gloo ranks) that make and load the checkpoints of these tests."""

from __future__ import annotations

from pathlib import Path

import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from partial_fc.comm import make_collectives
from partial_fc.optim import RowSparseAdamW, RowSparseSGD

C, D, SEED, STEPS = 29, 6, 7, 3  # 29 classes: uneven shards at world sizes 2 and 3
EXTRA = {"arch": "toy", "num_classes": C}  # the trainer's fingerprint counts the classes


def make_head(num_classes: int, *, margin: str = "cosface", lr: float = 0.1) -> tuple[PartialFC, RowSparseSGD]:
    head = PartialFC(num_classes, D, margin=margin, sample_rate=0.5, seed=SEED)
    return head, RowSparseSGD([head.weight], lr=lr, momentum=0.9, weight_decay=1e-3)


def state_of(head: PartialFC, opt: RowSparseSGD) -> dict:
    momentum = opt.state[head.weight].get("momentum_buffer") if head.weight in opt.state else None
    return {"weight": head.weight.detach().clone(), "momentum": None if momentum is None else momentum.clone(),
            "step": head.step, "range": list(head.class_range), "lr": opt.param_groups[0]["lr"]}


def train_and_save(rank: int, world: int, run_dir: str, margin: str = "cosface") -> dict:
    """STEPS partial-FC steps (half the negatives sampled: some rows never move), then a save."""
    comm = make_collectives()
    head, opt = make_head(C, margin=margin)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        x, y = torch.randn(4, D, generator=g), torch.randint(0, C, (4,), generator=g)
        head(x, y).backward()
        opt.step()
        opt.zero_grad()
    save_checkpoint(run_dir, STEPS, comm=comm, head=head, head_optimizer=opt, trainer_state={"samples_seen": 12},
                    meta_extra=EXTRA, rng=True)
    return state_of(head, opt)


def reshard_and_save(rank: int, world: int, source: str, run_dir: str) -> dict:
    """Load ``source`` at this world size and save it again: a checkpoint of the same rows saved here."""
    comm = make_collectives()
    head, opt = make_head(C, lr=5.0)
    trainer = load_checkpoint(latest_checkpoint(source), comm=comm, head=head, head_optimizer=opt, expect_extra=EXTRA)
    save_checkpoint(run_dir, STEPS, comm=comm, head=head, head_optimizer=opt, trainer_state=trainer, meta_extra=EXTRA)
    return state_of(head, opt)


def load_grown(rank: int, world: int, path: str, num_classes: int) -> dict:
    """Load a grown checkpoint into a fresh head of ``num_classes``, then take one step on labels
    that include new classes (the loaded state must train)."""
    comm = make_collectives()
    head, opt = make_head(num_classes, lr=5.0)
    load_checkpoint(Path(path), comm=comm, head=head, head_optimizer=opt,
                    expect_extra={"arch": "toy", "num_classes": num_classes})
    loaded = state_of(head, opt)
    g = torch.Generator().manual_seed(7)  # the same batch on every rank
    x, y = torch.randn(4, D, generator=g), torch.arange(num_classes - 4, num_classes)
    head(x, y).backward()
    opt.step()
    return {**loaded, "after": head.weight.detach().clone()}


def make_int8_adamw(num_classes: int) -> tuple[PartialFC, RowSparseAdamW]:
    head = PartialFC(num_classes, D, margin="cosface", sample_rate=0.5, seed=SEED)
    return head, RowSparseAdamW([head.weight], lr=0.01, weight_decay=0.1, state_dtype="int8")


def train_int8_and_save(rank: int, world: int, run_dir: str) -> dict:
    """AdamW with 8-bit moments (codes and per-row scales, compact state), STEPS steps, a save."""
    comm = make_collectives()
    head, opt = make_int8_adamw(C)
    g = torch.Generator().manual_seed(200 + rank)
    for _ in range(STEPS):
        x, y = torch.randn(4, D, generator=g), torch.randint(0, C, (4,), generator=g)
        head(x, y).backward()
        opt.step()
        opt.zero_grad()
    save_checkpoint(run_dir, STEPS, comm=comm, head=head, head_optimizer=opt, trainer_state={}, meta_extra=EXTRA)
    return {key: value.clone() for key, value in opt.state[head.weight].items()}
