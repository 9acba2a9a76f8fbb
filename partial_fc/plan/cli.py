"""`partial-fc plan`: will the sharded head fit, and what to change when it does not.

    partial-fc plan --classes 100000000 --dim 512 --gpus 8 --gpu-mem 80GiB --sample-rate 0.1
    partial-fc plan --classes 400000000 --dim 512 --gpus 8 --gpu-mem 80GiB --state-dtype bf16 --optim-state int8

Per-rank memory of the largest shard, term by term (see ``partial_fc.plan.memory``), the
largest class count that fits, and alternatives when it does not fit. Counts the head only:
the backbone's weights, activations and optimizer come on top.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from partial_fc.plan.advice import suggestions
from partial_fc.plan.memory import DEFAULT_CHUNK_SIZE, OFFLOADS, OPTIM_STATES, OPTIMIZERS, STATE_DTYPES, Plan, \
    largest_classes, plan_memory
from partial_fc.plan.units import format_bytes, parse_bytes
from partial_fc.util.atomic import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, required=True, help="total classes C")
    parser.add_argument("--dim", type=int, required=True, help="embedding dimension D")
    parser.add_argument("--gpus", type=int, required=True, help="ranks sharing the head (world size)")
    parser.add_argument("--gpu-mem", required=True, help="memory per rank, e.g. 80GiB, 24G, 40GB")
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128, help="samples per rank b")
    parser.add_argument("--state-dtype", choices=sorted(STATE_DTYPES), default="fp32", help="class-center storage")
    parser.add_argument("--optim-state", choices=sorted(OPTIM_STATES), default="fp32",
                        help="optimizer-state storage (int8: one fp32 scale per row)")
    parser.add_argument("--offload", choices=OFFLOADS, default="none", help="keep the table in host memory or a mapped file")
    parser.add_argument("--optim", choices=OPTIMIZERS, default="sgd", help="sgd (with momentum) or adamw")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="classes per logit tile")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda reserves 1 GiB for the context and NCCL; cpu counts the measured runtime")
    parser.add_argument("--json", metavar="PATH", help="also write the plan as JSON to PATH ('-': print only the JSON)")


def _options(args: argparse.Namespace) -> dict:
    return dict(dim=args.dim, world_size=args.gpus, batch_size=args.batch_size, sample_rate=args.sample_rate,
                state_dtype=args.state_dtype, optim_state=args.optim_state, offload=args.offload, optim=args.optim,
                chunk_size=args.chunk_size, device=args.device)


def run(args: argparse.Namespace) -> int:
    budget = parse_bytes(args.gpu_mem)
    options = _options(args)
    plan = plan_memory(classes=args.classes, **options)
    largest = largest_classes(budget, **options)
    fixes = [] if plan.fits(budget) else suggestions(plan, budget)
    doc = {"plan": dataclasses.asdict(plan), "total_bytes": plan.total_bytes, "budget_bytes": budget,
           "fits": plan.fits(budget), "largest_classes": largest,
           "suggestions": [{"change": label, "total_bytes": p.total_bytes} for label, p in fixes]}
    if args.json and args.json != "-":
        write_json_atomic(args.json, doc)
    print(json.dumps(doc, indent=2) if args.json == "-" else _format(plan, budget, largest, fixes))
    return 0


def _format(plan: Plan, budget: int, largest: int, fixes: list[tuple[str, Plan]]) -> str:
    local = -(-plan.classes // plan.world_size)
    lines = [
        f"partial-fc plan: C={plan.classes:,} D={plan.dim} on {plan.world_size} {plan.device} rank(s), "
        f"b={plan.batch_size}/rank, r={plan.sample_rate}, {plan.optim}, state {plan.state_dtype}, "
        f"optimizer state {plan.optim_state}, offload {plan.offload}",
        f"bytes per class (weights + optimizer state): {plan.bytes_per_class:,.0f} B",
        f"largest shard: {local:,} classes, ~{plan.sampled_rows:,} sampled per step",
        "",
        "per-rank memory:",
    ]
    width = max(len(k) for k in plan.terms)
    for name, value in plan.terms.items():
        lines.append(f"  {name:<{width}}  {format_bytes(value):>12}")
    lines.append(f"  {'total':<{width}}  {format_bytes(plan.total_bytes):>12}  of {format_bytes(budget)}")
    if plan.host_bytes:
        lines.append(f"  host memory (pinned) per rank: {format_bytes(plan.host_bytes)}")
    if plan.disk_bytes:
        lines.append(f"  disk (memory-mapped table) per rank: {format_bytes(plan.disk_bytes)}")
    lines.append("")
    verdict = "fits" if plan.fits(budget) else "does NOT fit"
    lines.append(f"{verdict}: {format_bytes(plan.total_bytes)} of {format_bytes(budget)} per rank; "
                 f"largest C that fits with these settings: {largest:,}")
    if not plan.fits(budget):
        if fixes:
            lines.append("each of these alone makes it fit:")
            lines += [f"  {label}: {format_bytes(p.total_bytes)} per rank" for label, p in fixes]
        else:
            lines.append("no single change makes it fit; combine more ranks with compact state or offload")
    lines.append("(the head only: the backbone's weights, activations and optimizer state come on top)")
    return "\n".join(lines)
