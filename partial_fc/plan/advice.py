"""What to change when a plan does not fit, and the one-line refusal built from it."""

from __future__ import annotations

from partial_fc.plan.memory import Plan, plan_memory
from partial_fc.plan.units import format_bytes


def options_of(plan: Plan, **extra) -> dict:
    """The keywords (but ``classes``) that rebuild ``plan`` with ``plan_memory``; ``extra`` overrides."""
    keys = ("dim", "world_size", "batch_size", "sample_rate", "state_dtype", "optim_state", "offload", "optim", "device",
            "momentum", "subcenters", "chunk_size")
    return {**{k: getattr(plan, k) for k in keys}, "runtime_bytes": plan.terms["runtime"], **extra}


def suggestions(plan: Plan, budget: int) -> list[tuple[str, Plan]]:
    """Single changes (as ``partial-fc plan`` flags) that make ``plan`` fit ``budget``, each
    with the plan it gives."""
    options, out = options_of(plan), []

    def consider(label: str, **change) -> bool:
        p = plan_memory(classes=plan.classes, **{**options, **change})
        if p.fits(budget):
            out.append((label, p))
        return p.fits(budget)

    world = options["world_size"]
    for more in (2 * world, 4 * world, 8 * world, 16 * world):
        if more <= plan.classes and consider(f"--gpus {more}", world_size=more):
            break
    if options["state_dtype"] == "fp32":
        consider("--state-dtype bf16", state_dtype="bf16")
    if "fp32" in (options["state_dtype"], options["optim_state"]):
        consider("--state-dtype bf16 --optim-state int8", state_dtype="bf16", optim_state="int8")
    if options["offload"] == "none":
        consider("--offload host", offload="host")
    for rate in (0.1, 0.05, 0.02):
        if rate < options["sample_rate"] and consider(f"--sample-rate {rate}", sample_rate=rate):
            break
    if options["chunk_size"] > 8192:
        consider("--chunk-size 8192 (smaller logit tiles, more recomputation)", chunk_size=8192)
    return out


def require_fits(plan: Plan, budget: int, *, where: str) -> None:
    """Raise a one-line ValueError when ``plan`` does not fit ``budget`` bytes of ``where``
    (e.g. "cuda:0"), naming the largest terms and the changes that would fit."""
    if plan.fits(budget):
        return
    top = sorted(plan.terms.items(), key=lambda kv: -kv[1])[:3]
    fixes = suggestions(plan, budget)
    fix = "; ".join(label for label, _ in fixes) or "more ranks combined with compact state or offload"
    raise ValueError(
        f"the head needs {format_bytes(plan.total_bytes)} per rank for {plan.classes:,} classes but {where} has "
        f"{format_bytes(budget)} ({', '.join(f'{k} {format_bytes(v)}' for k, v in top)}); would fit with: {fix}")
