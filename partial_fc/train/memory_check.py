"""Refusing, before the class weights exist, a head that will not fit the device's free memory.

The capacity planner (``partial_fc.plan``) predicts the head's per-rank peak from the config
alone; the free memory is CUDA's ``mem_get_info`` on a GPU, and on CPU the kernel's MemAvailable
shared by the ranks of this host. The fixes it proposes are ``partial-fc plan`` flags; here they
are said as the config keys that make the same change (``head.sample_rate=0.1``).
"""

from __future__ import annotations

import socket
import zlib
from dataclasses import fields

import torch

from partial_fc import margins
from partial_fc.comm import Collectives
from partial_fc.config.train import PAIR_LOSSES, HeadConfig, TrainConfig
from partial_fc.plan import Plan, format_bytes, plan_memory, suggestions

_SKIP = "or set train.check_memory=false to skip this check"


def head_plan(cfg: TrainConfig, *, num_classes: int, world_size: int, device: torch.device) -> Plan | None:
    """The planner's prediction for this config's class weights; None for a loss without them."""
    if cfg.loss.name in PAIR_LOSSES:
        return None
    head = cfg.head
    # the agent losses score every agent; only the partial-FC head samples classes
    partial = cfg.loss.name == "partial_fc"
    subcenters = margins.build(head.margin, **head.margin_params).subcenters if partial else 1
    return plan_memory(classes=num_classes, dim=cfg.model.embedding_dim, world_size=world_size,
                       batch_size=cfg.data.batch_size, sample_rate=head.sample_rate if partial else 1.0,
                       state_dtype=head.state_dtype, optim_state=head.optim_state,
                       offload=head.offload, optim=cfg.optim.name, momentum=cfg.optim.momentum > 0,
                       subcenters=subcenters, chunk_size=head.chunk_size,
                       device="cuda" if device.type == "cuda" else "cpu")


def free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` now: CUDA's free bytes, or the host's MemAvailable; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def agreed_budget(comm: Collectives, device: torch.device) -> tuple[int, int] | None:
    """(bytes, rank): the smallest per-rank budget over all ranks and whose it is, the same on
    every rank (one all-gather of two integers), so all of them refuse or none. On CPU the ranks
    of one host share its memory: each gets MemAvailable / (ranks on the host). None when some
    rank cannot tell its free memory."""
    free = free_bytes(device)
    host = zlib.crc32(socket.gethostname().encode())
    rows = comm.all_gather(torch.tensor([[host, -1 if free is None else free]], dtype=torch.int64, device=device)).tolist()
    if any(f < 0 for _, f in rows):
        return None
    sharing = [sum(h == host_r for h, _ in rows) if device.type == "cpu" else 1 for host_r, _ in rows]
    budgets = [f // n for (_, f), n in zip(rows, sharing)]
    rank = min(range(len(budgets)), key=budgets.__getitem__)
    return budgets[rank], rank


def config_fixes(plan: Plan, budget: int, *, cfg: TrainConfig) -> list[str]:
    """The planner's single changes that fit ``budget``, as config keys (a change to a key this
    config does not have yet, such as a compact state dtype, is left out), then the largest
    ``data.batch_size`` that fits, which the planner does not vary."""
    have = {f.name for f in fields(HeadConfig)}
    out = []
    for _, fixed in suggestions(plan, budget):
        keys = [k for k in ("state_dtype", "optim_state", "offload", "sample_rate", "chunk_size")
                if getattr(fixed, k) != getattr(plan, k)]
        if any(k not in have for k in keys) or ("sample_rate" in keys and cfg.loss.name != "partial_fc"):
            continue  # no such key yet, or a loss that scores every class
        change = [f"{fixed.world_size} ranks (more GPUs or nodes)"] if fixed.world_size != plan.world_size else []
        out.append(" with ".join(change + [f"head.{k}={getattr(fixed, k)}" for k in keys]))
    options = {k: getattr(plan, k) for k in ("classes", "dim", "world_size", "sample_rate", "state_dtype", "optim_state",
                                             "offload", "optim", "device", "momentum", "subcenters", "chunk_size")}
    batch = plan.batch_size // 2
    while batch >= 1:
        if plan_memory(batch_size=batch, runtime_bytes=plan.terms["runtime"], **options).fits(budget):
            out.append(f"data.batch_size={batch}")
            break
        batch //= 2
    return out


def refusal(plan: Plan, budget: int, *, where: str, cfg: TrainConfig) -> str:
    """The one line of a head that does not fit ``budget`` bytes of ``where``."""
    top = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(plan.terms.items(), key=lambda kv: -kv[1])[:3])
    fixes = config_fixes(plan, budget, cfg=cfg)
    fix = ("would fit with: " + "; ".join(fixes) + f"; {_SKIP}") if fixes else (
        f"no single change fits: combine more GPUs or nodes with a smaller head.sample_rate, {_SKIP}")
    return (f"the head needs {format_bytes(plan.total_bytes)} per rank for {plan.classes:,} classes ({top}) but {where} "
            f"has {format_bytes(budget)} free; {fix}")


def check_head_memory(cfg: TrainConfig, *, num_classes: int, comm: Collectives, device: torch.device) -> str | None:
    """Raise a one-line ValueError on every rank when the planned head does not fit the smallest
    rank's free memory; otherwise return a line for the log (None when there is nothing to say).
    Allocates nothing but the all-gather's two integers."""
    plan = head_plan(cfg, num_classes=num_classes, world_size=comm.world_size, device=device)
    if plan is None:
        return None
    agreed = agreed_budget(comm, device)
    if agreed is None:
        return f"head memory: {format_bytes(plan.total_bytes)} per rank planned; free memory unknown, not checked"
    budget, rank = agreed
    where = f"rank {rank} ({device.type}{', its share of the host' if device.type == 'cpu' else ''})"
    if not plan.fits(budget):
        raise ValueError(refusal(plan, budget, where=where, cfg=cfg))
    return f"head memory: {format_bytes(plan.total_bytes)} per rank planned, {format_bytes(budget)} free on {where}"
