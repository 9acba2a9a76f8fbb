"""`partial-fc bench head`: step time and peak memory of the sharded head, against the three
bare GEMMs of the same shapes (the floor) and a naive baseline, all measured in one run.

    partial-fc bench head --classes 1000000 --dim 512 --batch-size 128 --sample-rate 0.1 --world-size 2
    partial-fc bench head --find-max 8GiB --dim 512 --batch-size 128 --sample-rate 0.1 --world-size 2
    partial-fc bench head --classes 1000000 --state-dtype bf16 --optim-state int8 --no-baseline

Each implementation runs in its own freshly spawned ranks (gloo on CPU, NCCL on GPUs), so peak
memory is measured from a clean process. A step is forward + backward + the head optimizer's
step, timed on every rank; the median over the timed steps is reported, beside the capacity
planner's prediction of the peak (``partial_fc.plan``). ``--state-dtype`` / ``--optim-state``
store the head's rows and its momentum compactly (``partial_fc.optim``); the naive baseline
stays fp32. A rank that dies ends the bench at once
with one line naming it (``comm.local.run_ranks`` watches the ranks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from partial_fc import kernels
from partial_fc.bench.memory import MemoryMeter
from partial_fc.comm.local import RankFailure, run_ranks
from partial_fc.eval.device import add_device_argument, pick_device
from partial_fc.head.partial_fc import DEFAULT_CHUNK_SIZE
from partial_fc.plan import format_bytes, largest_classes, parse_bytes, plan_memory
from partial_fc.plan.memory import OFFLOADS, OPTIM_STATES, STATE_DTYPES
from partial_fc.util.atomic import write_json_atomic

MiB = 1024 * 1024
TARGETS = {"step_vs_floor": 1.3, "peak_vs_naive": 0.6, "working_vs_naive": 0.2}
_FIND_MAX_TRIES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, default=1_000_000, help="total classes C (all ranks)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension D")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per rank b")
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--margin", default="arcface")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (optimizer state is created and first touched)")
    add_device_argument(parser)
    parser.add_argument("--state-dtype", default="fp32", metavar="{fp32,bf16,fp16}",
                        help="storage dtype of the class centers (stochastically rounded updates)")
    parser.add_argument("--optim-state", default="fp32", metavar="{fp32,bf16,int8}",
                        help="storage of their momentum (int8: one fp32 scale per row)")
    parser.add_argument("--offload", default="none", metavar="{none,host,mmap}",
                        help="where the class table (rows + momentum) lives: device memory, host memory, mapped files")
    parser.add_argument("--offload-dir", default=None, metavar="DIR",
                        help="--offload mmap: where the (unlinked) table files go (default: the temp directory)")
    parser.add_argument("--find-max", metavar="MEMORY", help="find the largest --classes whose peak fits MEMORY per rank "
                        "(e.g. 8GiB; on CUDA the allocator's peak, the context comes on top): the planner "
                        "proposes, a run confirms; implies --no-baseline")
    parser.add_argument("--kernels", default="auto", choices=["auto", "eager"],
                        help="CPU: the fused kernels where they apply (auto, when they build here) or the eager "
                        "torch ops (eager), for an A/B comparison on the same machine")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-': print only the JSON)")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    device = pick_device(args.device)
    if device.index is not None:
        raise ValueError(f"--device {args.device}: bench head puts rank r on cuda:r; use --device cuda")
    use_cuda = device.type == "cuda"
    if use_cuda and torch.cuda.device_count() < args.world_size:
        raise ValueError(f"--world-size {args.world_size} needs {args.world_size} GPUs, found {torch.cuda.device_count()}")
    backend = "nccl" if use_cuda else "gloo"
    threads = 1 if use_cuda else max(1, (os.cpu_count() or 1) // args.world_size)
    cfg = {k: getattr(args, k) for k in ("classes", "dim", "batch_size", "sample_rate", "world_size", "chunk_size",
                                         "margin", "steps", "warmup", "state_dtype", "optim_state", "offload",
                                         "kernels")}
    cfg["cuda"] = use_cuda
    if args.kernels == "eager":
        kernels.force(False)  # this process's plan; each rank sets its own
    cfg["kernels_used"] = "none on CUDA" if use_cuda else kernels.describe()
    cfg["offload_dir"] = args.offload_dir or tempfile.gettempdir()
    try:
        if args.find_max:
            report = _find_max(cfg, parse_bytes(args.find_max), backend=backend, threads=threads)
        else:
            results = {"head": run_ranks(_bench_rank, args.world_size, dict(cfg, impl="head"), backend=backend,
                                         threads_per_rank=threads, timeout_s=3600)}
            if not args.no_baseline:
                results["naive"] = run_ranks(_bench_rank, args.world_size, dict(cfg, impl="naive"), backend=backend,
                                             threads_per_rank=threads, timeout_s=3600)
            report = _report(cfg, results, backend=backend, threads=threads)
    except RankFailure as err:
        # one line; the ranks' tracebacks only on request
        print(f"partial-fc bench head: {err if os.environ.get('PARTIAL_FC_DEBUG') else err.summary}", file=sys.stderr)
        return 1
    if args.json and args.json != "-":
        write_json_atomic(args.json, report)
    print(json.dumps(report, indent=2) if args.json == "-" else _format(report))
    return 0


def _validate(args: argparse.Namespace) -> None:
    for name in ("classes", "dim", "batch_size", "world_size", "chunk_size", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not 0 < args.sample_rate <= 1:
        raise ValueError(f"--sample-rate must be in (0, 1], got {args.sample_rate}")
    if args.classes < args.world_size:
        raise ValueError(f"--classes ({args.classes}) must be >= --world-size ({args.world_size})")
    for name, choices in {"state_dtype": STATE_DTYPES, "optim_state": OPTIM_STATES, "offload": OFFLOADS}.items():
        value = getattr(args, name)
        if value not in choices:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {sorted(choices)}, got {value!r}")


def _plan(cfg: dict, classes: int):
    return plan_memory(classes=classes, dim=cfg["dim"], world_size=cfg["world_size"], batch_size=cfg["batch_size"],
                       sample_rate=cfg["sample_rate"], chunk_size=cfg["chunk_size"], state_dtype=cfg["state_dtype"],
                       optim_state=cfg["optim_state"], offload=cfg["offload"], device="cuda" if cfg["cuda"] else "cpu",
                       runtime_bytes=0 if cfg["cuda"] else None,  # CUDA: compared with the allocator's peak
                       cpu_kernels=not cfg["cuda"] and kernels.enabled())


def _find_max(cfg: dict, budget: int, *, backend: str, threads: int) -> dict:
    """The planner's largest C for ``budget`` bytes per rank, confirmed by running it; each
    failed confirmation (peak over budget, or a rank killed) retries 5 % smaller."""
    keys = ("dim", "world_size", "batch_size", "sample_rate", "chunk_size", "state_dtype", "optim_state", "offload")
    proposed = largest_classes(budget, **{k: cfg[k] for k in keys}, device="cuda" if cfg["cuda"] else "cpu",
                               runtime_bytes=0 if cfg["cuda"] else None)
    if proposed == 0:
        raise ValueError(f"--find-max {format_bytes(budget)}: not even {cfg['world_size']} classes fit; "
                         f"lower --batch-size or --chunk-size")
    classes, attempts = proposed, []
    for _ in range(_FIND_MAX_TRIES):
        run_cfg = dict(cfg, classes=classes)
        try:
            per_rank = run_ranks(_bench_rank, cfg["world_size"], dict(run_cfg, impl="head"), backend=backend,
                                 threads_per_rank=threads, timeout_s=3600)
        except RankFailure as err:
            attempts.append({"classes": classes, "failed": err.summary})
        else:
            peak = max(r["peak"] for r in per_rank)
            attempts.append({"classes": classes, "peak_mib": peak / MiB})
            if peak <= budget:
                report = _report(run_cfg, {"head": per_rank}, backend=backend, threads=threads)
                report["find_max"] = {"budget_bytes": budget, "proposed": proposed, "confirmed": classes,
                                      "attempts": attempts}
                return report
        classes = max(cfg["world_size"], int(classes * 0.95))
    tried = "; ".join(f"C={a['classes']:,}: " + (a.get("failed") or f"peak {a['peak_mib']:.0f} MiB") for a in attempts)
    raise RankFailure(f"--find-max {format_bytes(budget)}: no confirmed size after {_FIND_MAX_TRIES} runs ({tried})")


def _bench_rank(rank: int, world_size: int, cfg: dict) -> dict:
    from partial_fc import PartialFC, margins
    from partial_fc.bench.naive import NaivePartialFC
    from partial_fc.comm import make_collectives
    from partial_fc.head.sampling import sample_classes
    from partial_fc.optim import RowSparseSGD

    device = torch.device("cuda", rank) if cfg["cuda"] else torch.device("cpu")
    if cfg.get("kernels") == "eager":
        kernels.force(False)
    offload = cfg.get("offload", "none")
    # a mapped table's pages count in the resident set but are the page cache's to evict: on
    # CPU the meter then follows the anonymous memory (RssAnon), sampled after each phase
    meter = MemoryMeter(device, anonymous=offload == "mmap")
    sync = (lambda: torch.cuda.synchronize(device)) if cfg["cuda"] else (lambda: None)
    b, dim, num_classes = cfg["batch_size"], cfg["dim"], cfg["classes"]
    total = cfg["warmup"] + cfg["steps"]
    gen = torch.Generator().manual_seed(1000 + rank)
    inputs = [(torch.randn(b, dim, generator=gen).to(device).requires_grad_(),
               torch.randint(0, num_classes, (b,), generator=gen).to(device)) for _ in range(total)]
    sync()
    before = meter.current()

    margin = margins.build(cfg["margin"]).to(device)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    if cfg["impl"] == "head":
        # rows created in the storage dtype one init block at a time, where the table lives
        head = PartialFC(num_classes, dim, margin=margin, sample_rate=cfg["sample_rate"], chunk_size=cfg["chunk_size"],
                         check_finite=False, state_dtype=cfg["state_dtype"], device=device, offload=offload,
                         offload_dir=os.path.join(cfg["offload_dir"], f"partial-fc-bench-rank{rank}"))
        start = head.class_range[0] * margin.subcenters
        opt = RowSparseSGD([head.weight], **sgd, state_dtype=cfg["optim_state"], seed=head.seed, row_offset=start)
        if offload != "none":
            head.weight.row_table.observer = meter.sample  # inside the step too: the staged state rows
    else:
        head = NaivePartialFC(num_classes, dim, margin=margin, sample_rate=cfg["sample_rate"], device=device)
        opt = torch.optim.SGD([head.weight], **sgd)

    times, losses = [], []
    for i, (x, y) in enumerate(inputs):
        if i == cfg["warmup"]:
            meter.reset_peak()
        sync()
        t0 = time.perf_counter()
        if offload != "none":
            head.prefetch(y)
        loss = head(x, y)
        meter.sample()
        loss.backward()
        meter.sample()
        opt.step()
        opt.zero_grad(set_to_none=True)
        meter.sample()
        sync()
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
        losses.append(loss.detach().float().cpu())
        x.grad = None
    peak = meter.peak() - before
    weights = head.weight.numel() * head.weight.element_size()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    comm = make_collectives()
    (start, stop), rows = head.class_range, head.weight.shape[0]
    last_labels = inputs[-1][1]
    # the floor's operands (S x D twice, B x S) come on top of whatever is still alive: free the
    # head first, or at the largest C that fits the floor itself would be OOM-killed
    del head, opt, inputs, x, y, loss
    gc.collect()
    labels = comm.all_gather(last_labels)  # also a barrier: every rank measures its floor at the same time
    sampled = sample_classes(labels, start=start, stop=stop, seed=0, step=total - 1, sample_rate=cfg["sample_rate"]).rows.numel()
    token = torch.zeros(1, device=device)
    floor = _gemm_floor(labels.numel(), sampled, dim, device, sync, reps=max(3, cfg["steps"]),
                        barrier=lambda: comm.all_reduce_(token, "sum"))
    return {"step_s": statistics.median(times), "floor_s": floor, "sampled": sampled, "peak": peak,
            "weights": weights, "state": state, "rows": rows, "first_loss": float(losses[0]),
            "table_in_peak": offload == "none" or (offload == "host" and not cfg["cuda"])}


def _gemm_floor(batch: int, sampled: int, dim: int, device: torch.device, sync, *, reps: int, barrier) -> float:
    """Median time of the three GEMMs a step cannot avoid: logits, embedding and class-row gradients.

    Timed as the step is: every repetition starts on all ranks together and ends when the last
    rank is done (``barrier`` on both sides). The step's collectives make the ranks wait for
    the slowest one, so a rank's own GEMM time alone would be a floor no step can reach when
    the ranks' cores run at different speeds (as they do on shared machines)."""
    x = torch.randn(batch, dim, device=device)
    w = torch.randn(sampled, dim, device=device)
    z = torch.empty(batch, sampled, device=device)
    dx, dw = torch.empty(batch, dim, device=device), torch.empty(sampled, dim, device=device)
    times = []
    for i in range(reps + 1):
        barrier()
        sync()
        t0 = time.perf_counter()
        torch.mm(x, w.t(), out=z)
        torch.mm(z, w, out=dx)
        torch.mm(z.t(), x, out=dw)
        sync()
        barrier()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _report(cfg: dict, results: dict, *, backend: str, threads: int) -> dict:
    rows = []
    for impl, per_rank in results.items():
        for rank, r in enumerate(per_rank):
            working = r["peak"] - (r["weights"] + r["state"] if r.get("table_in_peak", True) else 0)
            rows.append({"impl": impl, "rank": rank, "bytes_per_class": (r["weights"] + r["state"]) / r["rows"],
                         "step_ms": 1e3 * r["step_s"], "floor_ms": 1e3 * r["floor_s"],
                         "step_vs_floor": r["step_s"] / r["floor_s"], "peak_mib": r["peak"] / MiB,
                         "weights_state_mib": (r["weights"] + r["state"]) / MiB, "working_mib": working / MiB,
                         "sampled_per_rank": r["sampled"], "first_loss": r["first_loss"]})
    planned = _plan(cfg, cfg["classes"])
    summary = {"step_vs_floor": max(r["step_vs_floor"] for r in rows if r["impl"] == "head"),
               "planned_peak_mib": planned.total_bytes / MiB,
               "planned_vs_peak": planned.total_bytes / MiB / max(r["peak_mib"] for r in rows if r["impl"] == "head")}
    if "naive" in results:
        head = {r["rank"]: r for r in rows if r["impl"] == "head"}
        naive = {r["rank"]: r for r in rows if r["impl"] == "naive"}
        summary["naive_step_vs_floor"] = max(r["step_vs_floor"] for r in naive.values())
        summary["peak_vs_naive"] = max(head[k]["peak_mib"] / naive[k]["peak_mib"] for k in head)
        summary["working_vs_naive"] = max(head[k]["working_mib"] / naive[k]["working_mib"] for k in head)
        summary["first_loss_abs_diff"] = max(abs(head[k]["first_loss"] - naive[k]["first_loss"]) for k in head)
    device = torch.cuda.get_device_name(0) if cfg["cuda"] else f"cpu ({os.cpu_count()} cores, {threads} thread(s)/rank)"
    return {"config": cfg, "backend": backend, "device": device, "rows": rows, "summary": summary, "targets": TARGETS,
            "memory": "CUDA allocator peak" if cfg["cuda"] else (
                "anonymous resident memory (RssAnon, the largest after each transfer, forward, backward and step) "
                "minus before the head; the mapped table's pages are page cache" if cfg.get("offload") == "mmap"
                else "resident-set high-water mark (VmHWM) minus RSS before the head")}


def _format(report: dict) -> str:
    c = report["config"]
    lines = [
        f"partial-fc bench head: C={c['classes']:,} D={c['dim']} b={c['batch_size']}/rank (B={c['batch_size'] * c['world_size']}) "
        f"r={c['sample_rate']} N={c['world_size']} chunk={c['chunk_size']} margin={c['margin']}",
        f"mode: class centers {c['state_dtype']}, momentum {c['optim_state']}, offload {c['offload']} "
        f"(head only; the naive baseline is fp32); kernels: {c.get('kernels_used', 'auto')}",
        f"device: {report['device']}, backend {report['backend']}; median of {c['steps']} steps after {c['warmup']} warm-up",
        f"memory: {report['memory']}",
        "floor: the three GEMMs of the step's shapes on all ranks at once, each repetition from a common start "
        "to the last rank's end",
        "",
        f"{'impl':<6}{'rank':>5}{'B/class':>9}{'step ms':>10}{'floor ms':>10}{'x floor':>9}{'peak MiB':>10}{'w+state MiB':>13}"
        f"{'working MiB':>13}{'S/rank':>9}{'loss@0':>10}",
    ]
    for r in report["rows"]:
        lines.append(f"{r['impl']:<6}{r['rank']:>5}{r['bytes_per_class']:>9.0f}{r['step_ms']:>10.1f}{r['floor_ms']:>10.1f}{r['step_vs_floor']:>9.2f}"
                     f"{r['peak_mib']:>10.0f}{r['weights_state_mib']:>13.0f}{r['working_mib']:>13.0f}"
                     f"{r['sampled_per_rank']:>9}{r['first_loss']:>10.4f}")
    s, t = report["summary"], report["targets"]
    lines.append("")
    lines.append(f"head step / GEMM floor: {s['step_vs_floor']:.2f} (target <= {t['step_vs_floor']})")
    lines.append(f"planned peak (partial-fc plan): {s['planned_peak_mib']:.0f} MiB, "
                 f"{s['planned_vs_peak']:.2f} x the measured head peak")
    if "peak_vs_naive" in s:
        lines.append(f"naive step / GEMM floor: {s['naive_step_vs_floor']:.2f}")
        lines.append(f"head peak / naive peak: {s['peak_vs_naive']:.2f} (target <= {t['peak_vs_naive']})")
        lines.append(f"head working / naive working: {s['working_vs_naive']:.2f} (target <= {t['working_vs_naive']})")
        lines.append(f"|loss head - loss naive| at the first step: {s['first_loss_abs_diff']:.2e}")
    if "find_max" in report:
        f = report["find_max"]
        lines.append(f"largest C within {format_bytes(f['budget_bytes'])} per rank: {f['confirmed']:,} classes "
                     f"(planner proposed {f['proposed']:,}; confirmed by the run above)")
    return "\n".join(lines)
