"""Per-rank memory of the sharded head, term by term, from the tensors the head allocates.

Every term names the code it comes from, so a change there shows up here:

- weights, optimizer state: ``PartialFC.weight`` (ceil(C/N) x K rows on the largest shard) and
  ``optim/row_sparse.py`` (SGD: one momentum buffer; AdamW: two moments + a per-row step count).
- logit tile: ``sharded_ce._compute_tile``, (tile rows x B) fp32 in the workspace; the last tile
  is kept for the backward, the others recomputed, so one is alive.
- tile rows: the sampled rows gathered for the tile (``tile_w``), only when sampling (r < 1).
- gradient rows: the S x K sampled rows' fp32 gradient (``grad_rows`` in the workspace; the
  sparse ``weight.grad`` shares its memory) and its int64 indices.
- gathered embeddings: x and x' (B x D) in the forward, their gradients in the backward.
- scratch: the optimizer's two (block_rows x D) buffers, ``_row_dot``'s (4096 x D) buffer,
  the sampling mask (1 byte per local class) and its hash blocks.
- runtime: what the process holds besides tensors. On CPU, where bench head measures the
  resident set, this is the code pages, thread pools and gloo buffers: 97 MiB, measured with
  ``bench head`` at C=2000, D=16 (torch 2.13 CPU, 1 or 2 ranks alike). On CUDA the allocator's
  peak excludes it; 1 GiB is reserved for the CUDA context and NCCL (an allowance, not measured).

Compact modes (modelled ahead of the code that implements them): bf16/fp16 take 2 bytes per
element; int8 optimizer state takes 1 byte per element plus one fp32 scale per block of 64
elements of a row. Arithmetic stays fp32 inside the tile, so the working terms do not shrink,
and each compact tensor adds one fp32 block scratch to the optimizer. ``offload`` host or mmap
keeps the table (weights + state) off the device; the device then holds the step's sampled
rows of both, and the table is counted as host memory (pinned RAM) or disk (a mapped file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from partial_fc.head.checks import check_sample_rate

STATE_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIM_STATES = {"fp32": 4, "bf16": 2, "int8": 1}
OFFLOADS = ("none", "host", "mmap")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("cuda", "cpu")
INT8_BLOCK = 64  # elements sharing one fp32 scale
CPU_RUNTIME_BYTES = 97 * 1024**2
CUDA_RESERVE_BYTES = 1024**3
DEFAULT_CHUNK_SIZE = 65536  # partial_fc.head.partial_fc.DEFAULT_CHUNK_SIZE (not imported: keeps plan light)
_OPTIM_BLOCK_ROWS = 4096  # RowSparse* block_rows default
_ROW_DOT_BLOCK = 4096  # sharded_ce._row_dot
_HASH_BLOCK = 65536  # hashing.uniform_below


@dataclass(frozen=True)
class Plan:
    """A memory plan for the largest shard. ``terms`` are device bytes by name; ``host_bytes``
    and ``disk_bytes`` hold an offloaded table."""

    classes: int
    dim: int
    world_size: int
    batch_size: int
    sample_rate: float
    state_dtype: str
    optim_state: str
    offload: str
    optim: str
    device: str
    momentum: bool
    subcenters: int
    chunk_size: int
    sampled_rows: int
    bytes_per_class: float
    terms: dict[str, int] = field(default_factory=dict)
    host_bytes: int = 0
    disk_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(self.terms.values())

    def fits(self, budget_bytes: int) -> bool:
        return self.total_bytes <= budget_bytes


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def sampled_rows_estimate(local_classes: int, *, global_batch: int, classes: int, sample_rate: float) -> int:
    """Expected sampled classes S of a shard plus 3 standard deviations of the Bernoulli keep:
    the distinct positives of the global batch in this range plus r of the other classes."""
    if sample_rate >= 1.0:
        return local_classes
    positives = local_classes * (1.0 - (1.0 - 1.0 / classes) ** global_batch)  # distinct labels in range
    negatives = local_classes - positives
    spread = 3.0 * math.sqrt(negatives * sample_rate * (1.0 - sample_rate))
    return min(local_classes, math.ceil(positives + sample_rate * negatives + spread))


def plan_memory(*, classes: int, dim: int, world_size: int, batch_size: int, sample_rate: float = 1.0,
                state_dtype: str = "fp32", optim_state: str = "fp32", offload: str = "none", optim: str = "sgd",
                momentum: bool = True, subcenters: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE,
                device: str = "cuda", runtime_bytes: int | None = None) -> Plan:
    """Predicted peak memory of one rank (the one with the most classes) during a training step.

    batch_size is per rank (B = batch_size x world_size); ``momentum`` False means plain SGD
    with no state. ``runtime_bytes`` overrides the per-device allowance (see the module doc).
    """
    for name, value in (("classes", classes), ("dim", dim), ("world_size", world_size),
                        ("batch_size", batch_size), ("subcenters", subcenters), ("chunk_size", chunk_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_sample_rate(sample_rate)
    if classes < world_size:
        raise ValueError(f"classes ({classes}) must be >= world_size ({world_size})")
    _check_choice("state_dtype", state_dtype, STATE_DTYPES)
    _check_choice("optim_state", optim_state, OPTIM_STATES)
    _check_choice("offload", offload, OFFLOADS)
    _check_choice("optim", optim, OPTIMIZERS)
    _check_choice("device", device, DEVICES)

    k, f32 = subcenters, 4
    local = -(-classes // world_size)  # partial_fc.head.ranges: the first C mod N shards get one more
    big_b = batch_size * world_size
    sampled = sampled_rows_estimate(local, global_batch=big_b, classes=classes, sample_rate=sample_rate)
    row_weight = dim * STATE_DTYPES[state_dtype]
    row_state = _optimizer_row_bytes(dim, optim=optim, momentum=momentum, optim_state=optim_state)
    per_class = k * (row_weight + row_state)
    table = local * per_class
    tile_rows = min(sampled, max(1, chunk_size // k)) * k
    compact = (state_dtype != "fp32") + ((optim_state != "fp32") * _state_tensors(optim, momentum))

    terms = {}
    if offload == "none":
        terms["weights"] = local * k * row_weight
        terms["optimizer state"] = local * k * row_state
    else:
        terms["staged sampled rows"] = sampled * per_class  # the step's rows of the table, on the device
    terms["logit tile"] = tile_rows * big_b * f32
    terms["tile rows"] = tile_rows * dim * f32 if sample_rate < 1.0 else 0
    terms["gradient rows"] = sampled * k * (dim * f32 + 8) + (sampled * 8 if sample_rate < 1.0 else 0)
    terms["gathered embeddings"] = 4 * big_b * dim * f32 + 2 * batch_size * dim * f32
    terms["scratch"] = ((2 + compact) * min(_OPTIM_BLOCK_ROWS, sampled * k) * dim * f32
                        + min(_ROW_DOT_BLOCK, tile_rows) * dim * f32 + local + 3 * min(_HASH_BLOCK, local) * 8)
    terms["runtime"] = runtime_bytes if runtime_bytes is not None else (
        CUDA_RESERVE_BYTES if device == "cuda" else CPU_RUNTIME_BYTES)
    return Plan(classes=classes, dim=dim, world_size=world_size, batch_size=batch_size, sample_rate=sample_rate,
                state_dtype=state_dtype, optim_state=optim_state, offload=offload, optim=optim, device=device,
                momentum=momentum, subcenters=subcenters, chunk_size=chunk_size, sampled_rows=sampled,
                bytes_per_class=per_class, terms=terms,
                host_bytes=table if offload == "host" else 0, disk_bytes=table if offload == "mmap" else 0)


def _state_tensors(optim: str, momentum: bool) -> int:
    return 2 if optim == "adamw" else int(momentum)


def _optimizer_row_bytes(dim: int, *, optim: str, momentum: bool, optim_state: str) -> float:
    """Optimizer-state bytes of one class row: per state tensor D elements (+ int8 scales);
    AdamW adds a fp32 per-row step count."""
    per_tensor = dim * OPTIM_STATES[optim_state]
    if optim_state == "int8":
        per_tensor += math.ceil(dim / INT8_BLOCK) * 4
    row = _state_tensors(optim, momentum) * per_tensor
    return row + (4 if optim == "adamw" else 0)


def largest_classes(budget_bytes: int, **kwargs) -> int:
    """The largest C whose plan fits ``budget_bytes`` (same keywords as ``plan_memory`` without
    ``classes``); 0 when not even C = world_size fits. Memory grows monotonically with C."""
    world_size = kwargs["world_size"]
    fits = lambda c: plan_memory(classes=c, **kwargs).fits(budget_bytes)  # noqa: E731
    if not fits(world_size):
        return 0
    lo, hi = world_size, 2 * world_size
    while fits(hi):
        lo, hi = hi, 2 * hi
        if hi > 1 << 50:
            return lo  # offloaded tables cost the device almost nothing per class
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
