"""Per-rank memory of the sharded head, term by term, from the tensors the head allocates.

Every term names the code it comes from, so a change there shows up here:

- weights, optimizer state: ``PartialFC.weight`` (ceil(C/N) x K rows on the largest shard) and
  ``optim/row_sparse.py`` (SGD: one momentum buffer; AdamW: two moments + a per-row step count).
- logit tile: ``sharded_ce._compute_tile``, (tile rows x B) fp32 in the workspace; the last tile
  is kept for the backward, the others recomputed, so one is alive.
- tile rows: the sampled rows gathered for the tile (``tile_w``), only when sampling (r < 1);
  with the fused CPU kernels one block of them (``sharded_ce.gather_block_rows``, 512 KiB).
- gradient rows: the S x K sampled rows' fp32 gradient (``grad_rows`` in the workspace; the
  sparse ``weight.grad`` shares its memory) and its int64 indices; bf16 rows on the fused CPU
  path keep one block of fp32 gradient rows, each rounded into the stored dtype in cache.
- gathered embeddings: x and x' (B x D) in the forward, their gradients in the backward.
- scratch: the optimizer's block buffers (``optim/scratch.py``; ``optimizer_block_bytes``; none
  for SGD with the fused CPU kernels, which update every row in one pass),
  ``_row_dot``'s (4096 x D) buffer, the sampling mask (1 byte per local class) and its hash blocks.
- runtime: what the process holds besides tensors. On CPU, where bench head measures the
  resident set, this is the code pages, thread pools and gloo buffers: 97 MiB, measured with
  ``bench head`` at C=2000, D=16 (torch 2.13 CPU, 1 or 2 ranks alike). On CUDA the allocator's
  peak excludes it; 1 GiB is reserved for the CUDA context and NCCL (an allowance, not measured).
  With ``offload`` mmap on CPU the bench measures anonymous memory (the mapped pages are page
  cache), whose runtime part is 67 MiB (``bench head --offload mmap`` at C=2000, D=16).

Compact modes: the persistent bytes per row are ``optim.footprint.bytes_per_row``, computed from
the optimizers' own state tensors (int8: one fp32 scale per row and state; AdamW: a 4-byte step
count per row). Arithmetic stays fp32 inside the tile, so the fp32 working terms stay, and a
bf16 / fp16 shard adds: the class-row gradient in the stored dtype (autograd casts the fp32
rows to the leaf's dtype: S x D x 2), the stored-dtype gather buffer of a tile
(``sharded_ce._compute_tile``'s ``tile_w_stored``, tile rows x D x 2), and the optimizer's
widening, noise and rounding buffers (``optimizer_block_bytes``). ``offload`` host or mmap
keeps the table (weights + state) off the device; the device then holds the step's sampled
rows of both (``head.offload``'s staged copy), and the table is counted as host memory (pinned
RAM; on a CPU device that is the same memory, so it is a term) or disk (mapped files, whose
pages the page cache holds and evicts: on CPU the bench compares mmap plans with the anonymous
resident set).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from partial_fc.head.checks import check_sample_rate
from partial_fc.optim.footprint import bytes_per_row

STATE_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIM_STATES = {"fp32": 4, "bf16": 2, "int8": 1}
OFFLOADS = ("none", "host", "mmap")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("cuda", "cpu")
CPU_RUNTIME_BYTES = 97 * 1024**2
CPU_RUNTIME_ANON_BYTES = 67 * 1024**2  # its anonymous part: the mmap bench's RssAnon, same measurement
CUDA_RESERVE_BYTES = 1024**3
DEFAULT_CHUNK_SIZE = 786432  # partial_fc.head.partial_fc.DEFAULT_CHUNK_SIZE (not imported: keeps plan light)
_GATHER_BLOCK_BYTES = 1 << 19  # partial_fc.head.sharded_ce.GATHER_BLOCK_BYTES
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
                device: str = "cuda", runtime_bytes: int | None = None, cpu_kernels: bool | None = None) -> Plan:
    """Predicted peak memory of one rank (the one with the most classes) during a training step.

    batch_size is per rank (B = batch_size x world_size); ``momentum`` False means plain SGD
    with no state. ``runtime_bytes`` overrides the per-device allowance (see the module doc).
    ``cpu_kernels``: whether a CPU step runs the fused kernels (``partial_fc.kernels``; None:
    whether they are available here); they need no optimizer block buffers for SGD and no
    stored-dtype tile buffer.
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

    if device == "cpu" and cpu_kernels is None:
        from partial_fc import kernels  # builds them on first use: only for a CPU plan
        cpu_kernels = kernels.enabled()
    fused = device == "cpu" and bool(cpu_kernels)
    fused_sgd = fused and optim == "sgd" and state_dtype in ("fp32", "bf16")
    fused_tile = fused and subcenters == 1 and state_dtype in ("fp32", "bf16")  # sharded_ce._fused (fp16 rows: eager)
    k, f32 = subcenters, 4
    local = -(-classes // world_size)  # partial_fc.head.ranges: the first C mod N shards get one more
    big_b = batch_size * world_size
    sampled = sampled_rows_estimate(local, global_batch=big_b, classes=classes, sample_rate=sample_rate)
    row_weight = dim * STATE_DTYPES[state_dtype]
    row_state = _row_bytes(dim, optim, state_dtype, optim_state, momentum) - row_weight
    per_class = k * (row_weight + row_state)
    table = local * per_class
    tile_rows = min(sampled, max(1, chunk_size // k)) * k
    narrow = STATE_DTYPES[state_dtype] if state_dtype != "fp32" else 0  # bytes per element of a narrow shard

    terms = {}
    if offload == "none":
        terms["weights"] = local * k * row_weight
        terms["optimizer state"] = local * k * row_state
    else:
        terms["staged sampled rows"] = sampled * per_class  # the step's rows of the table, on the device
        if offload == "host" and device == "cpu":  # the host is the device: the table is in the same memory
            terms["host table"] = table
    terms["logit tile"] = tile_rows * big_b * f32
    # a tile's rows are gathered into tile_w when sampling; an offloaded head's staged rows are
    # already contiguous, so its fp32 tiles are views of them and only a narrow table widens.
    # The fused CPU tiles gather one block of rows at a time (sharded_ce.gather_block_rows).
    gathered_rows = min(tile_rows, max(1, _GATHER_BLOCK_BYTES // (f32 * dim))) if fused_tile else tile_rows
    gathers = sample_rate < 1.0 if offload == "none" else bool(narrow)
    terms["tile rows"] = gathered_rows * dim * f32 if gathers else 0
    # bf16 rows on the fused path round each block's fp32 gradient into the stored dtype while it
    # is in cache (sharded_ce._backward_fused): one block of fp32 rows instead of all S of them
    narrow_grad = fused_tile and state_dtype == "bf16"
    grad_f32_rows = gathered_rows if narrow_grad else sampled * k
    terms["gradient rows"] = grad_f32_rows * dim * f32 + sampled * k * 8 + (sampled * 8 if sample_rate < 1.0 else 0)
    if fused_tile and gathered_rows < tile_rows:  # a tile of several blocks: one reused block of probabilities
        terms["logit tile"] += gathered_rows * big_b * f32
    if narrow:
        terms["stored-dtype gradient rows"] = sampled * k * (dim * narrow + 8)
        gathered_narrow = sample_rate < 1.0 and offload == "none" and not (fused_tile and state_dtype == "bf16")
        terms["stored-dtype tile rows"] = tile_rows * dim * narrow if gathered_narrow else 0
    terms["gathered embeddings"] = 4 * big_b * dim * f32 + 2 * batch_size * dim * f32
    block = min(_OPTIM_BLOCK_ROWS, sampled * k)
    if fused_sgd:  # one pass over all rows, no block buffers: the noise keys of the rows and their ids
        streams = int(state_dtype != "fp32") + int(momentum and optim_state != "fp32")
        optimizer_scratch = sampled * k * (4 * streams + 16) if streams else 0
    else:
        optimizer_scratch = optimizer_block_bytes(block, dim, optim=optim, state_dtype=state_dtype,
                                                  optim_state=optim_state, momentum=momentum)
    terms["scratch"] = (optimizer_scratch
                        + (0 if fused_tile else min(_ROW_DOT_BLOCK, tile_rows) * dim * f32)  # fused: a kernel
                        + local + 3 * min(_HASH_BLOCK, local) * 8)
    terms["runtime"] = runtime_bytes if runtime_bytes is not None else (
        CUDA_RESERVE_BYTES if device == "cuda" else CPU_RUNTIME_ANON_BYTES if offload == "mmap" else CPU_RUNTIME_BYTES)
    return Plan(classes=classes, dim=dim, world_size=world_size, batch_size=batch_size, sample_rate=sample_rate,
                state_dtype=state_dtype, optim_state=optim_state, offload=offload, optim=optim, device=device,
                momentum=momentum, subcenters=subcenters, chunk_size=chunk_size, sampled_rows=sampled,
                bytes_per_class=per_class, terms=terms,
                host_bytes=table if offload == "host" else 0, disk_bytes=table if offload == "mmap" else 0)


@functools.lru_cache(maxsize=256)
def _row_bytes(dim: int, optim: str, state_dtype: str, optim_state: str, momentum: bool) -> int:
    # cached: largest_classes asks the same row size some 60 times
    return bytes_per_row(dim=dim, optim=optim, weight_dtype=state_dtype, state_dtype=optim_state, momentum=momentum)


def optimizer_block_bytes(rows: int, dim: int, *, optim: str = "sgd", state_dtype: str = "fp32",
                          optim_state: str = "fp32", momentum: bool = True) -> int:
    """The row-sparse optimizer's reused buffers for a block of ``rows`` rows (SGD with weight
    decay, or AdamW), as ``optim/row_sparse.py`` names them, in bytes per element of the block:

    - fp32 rows: the weight, the update and one per state (SGD: w, d, m; AdamW: w, m, v) — 4 each;
    - a bf16 / fp16 weight: the gradient widened (4), the gathered stored rows (2), their rounded
      bits (2) and the noise words (4);
    - bf16 states: the gathered stored rows (2), the rounded bits (4 + 2), the noise (4, shared);
    - int8 states: one int8 code buffer per code dtype (1 each: int8 momentum, uint8 for Adam's
      v), the fp32 quotient (4), the noise (4, shared), and one fp32 scale per row.
    ``tests/plan`` holds this against the buffers a real step leaves behind.
    """
    states = 2 if optim == "adamw" else int(momentum)
    per_element = 12 if states else 8  # SGD w, d (, m); AdamW w, m, v
    noise = False
    if state_dtype != "fp32":
        per_element += 4 + 2 + 2
        noise = True
    per_row = 0
    if states and optim_state == "bf16":
        per_element += 2 + 4 + 2
        noise = True
    elif states and optim_state == "int8":
        per_element += states + 4  # one code buffer per code dtype: int8 (signed), uint8 (Adam's v)
        per_row += 4
        noise = True
    per_element += 4 if noise else 0
    return rows * (dim * per_element + per_row)


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
