"""Chunked, class-sharded margin cross-entropy.

Each rank holds a shard of the class centers and the sampled rows ``rows`` of it. For the
global batch x (B, D) it computes the plain logits of its sampled classes tile by tile,
``chunk_size`` classes at a time, keeping only per-row running max and sum of exponentials
(an online log-sum-exp). The margin touches only the targets this rank owns: at most B values,
computed from cos theta_y by the margin's differentiable ``target_logit``.

Collectives (forward): one all-reduce MAX of B floats, one all-reduce SUM of 2B floats
(sum of exponentials and target logit, fused); a margin with ``needs_target_cos`` adds one
all-reduce SUM of B floats before the tiles; a learned scale (``Margin.learned_scale``) makes
the fused SUM 3B floats. Backward: none (the embedding gradient is reduced by the all-gather
that produced x).

Learned scale s: every logit is s times a function of the cosines, so dz/ds = z/s and
dL/ds = 1/(B s) sum_i (E_{p_i}[z_i] - z_{i,y_i}), where E_{p_i}[z_i] = sum_j p_ij z_ij runs over
the classes of every rank. Each rank adds a third row, sum_j exp(z_ij - max) z_ij over its
classes, to the fused all-reduce SUM, so the gradient needs no collective of its own (it cannot
be one scalar: each row's sum is divided by that row's global normaliser, known only after the
reduction). dL/ds is then computed from all-reduced values only and is bit-identical on every
rank; the parameter stays replicated without reducing its gradient again.

Margin hooks (see ``Margin``): with ``subcenters`` K > 1 the rows are K per class and each
tile takes the max over a class's rows (tiles hold chunk_size // K classes); ``prepare`` runs
once per step before the tiles and its state is a constant of the backward;
``negative_logits`` transforms each tile and its derivative multiplies the tile's gradient.

Memory: at most one tile of chunk_size x B logits is alive. The last tile of the forward is
kept (as exponentials) for the backward; the other tiles are recomputed there. With the
whole sampled shard in one tile (S <= chunk_size) nothing is recomputed. A learned scale adds
one scratch of min(chunk_size, 1024) x B in the forward. Tiles and the class-row gradient live
in a ``Workspace`` reused from step to step.

Gradients: loss = mean over the B samples of (logsumexp_j z_ij - z_{i,y_i}); the gradient of
this mean, exact for this rank's classes, is returned for x, x' and the class rows. The class
gradient is a sparse COO tensor holding only the S sampled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from partial_fc import kernels
from partial_fc.comm.collectives import Collectives
from partial_fc.head.margins.base import EPS, Margin, overrides, row_norm
from partial_fc.head.workspace import Workspace

GATHER_BLOCK_BYTES = 1 << 19


def target_cosines(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos theta, |x|, |w| of k samples x (k, D) with their class centers w (k, D), or with
    their K sub-centers w (k, K, D): then the max cosine and the norm of its arg-max row."""
    x_norm = row_norm(x)
    if w.dim() == 2:
        w_norm = row_norm(w)
        return ((x * w).sum(1) / (x_norm * w_norm)).clamp(-1.0, 1.0), x_norm, w_norm
    w_norms = torch.linalg.vector_norm(w, dim=2).clamp_min(EPS)
    cos, best = (torch.einsum("kd,kjd->kj", x, w) / (x_norm[:, None] * w_norms)).max(1)
    return cos.clamp(-1.0, 1.0), x_norm, w_norms.gather(1, best[:, None]).squeeze(1)


def target_logits(margin: Margin, x: torch.Tensor, w: torch.Tensor, step: int,
                  state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Margin target logits of k samples x (k, D) with their own class centers w (k, D) or (k, K, D)."""
    cos, x_norm, w_norm = target_cosines(x, w)
    extra = {} if state is None else {"state": state}
    return margin.target_logit(cos, x_norm=x_norm, w_norm=w_norm, step=step, **extra)


def _prepare(margin: Margin, x: torch.Tensor, x_own: torch.Tensor, w_own: torch.Tensor, owned: torch.Tensor,
             comm: Collectives, training: bool) -> dict[str, torch.Tensor] | None:
    """Run the margin's per-step hook; the one place an extra collective (B floats) can happen."""
    if not overrides(margin, "prepare"):
        return None
    target_cos = None
    if margin.needs_target_cos:
        target_cos = x.new_zeros(x.shape[0])
        target_cos[owned] = target_cosines(x_own, w_own)[0]
        comm.all_reduce_(target_cos, "sum")  # each sample's label is owned by exactly one rank
    return margin.prepare(x, x_norm=row_norm(x), target_cos=target_cos, training=training)


@dataclass
class _Tile:
    start: int
    stop: int
    w: torch.Tensor          # (c, D) raw class rows of the tile
    inv_norm: torch.Tensor | None  # (c,) 1/|w_j| when the margin normalises weights
    logits: torch.Tensor     # (c, B): transposed logits of the tile, one row per class
    best: torch.Tensor | None = None     # (c, B) arg-max sub-center (K > 1)
    dlogits: torch.Tensor | None = None  # (c, B) derivative of margin.negative_logits
    colmax: torch.Tensor | None = None   # (B,) the tile's column max, from the fused passes
    # fused tiles gather their rows block by block (``_row_blocks``) and keep none: w is None
    # and the backward gathers each block again from src (rows ids, or rows start.. of src)
    src: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    # whether logits holds exp(z - the forward's running max) (the kept tile of the eager path,
    # or of a learned scale) rather than the logits z themselves
    exps: bool = False


class ShardedMarginCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_scaled, weight, rows, target_pos, margin, step, comm, chunk_size, workspace, training,
                scale=None):
        batch = x.shape[0]
        k = margin.subcenters
        chunk_size = max(1, chunk_size // k)  # classes per tile: at most chunk_size rows
        num_sampled = weight.shape[0] // k if rows is None else rows.shape[0]
        # equal tiles: the one kept for the backward is as large as the others, so the fewest
        # rows are recomputed ((n - 1) / n of them with n tiles, not all but a remainder)
        chunk_size = max(1, -(-num_sampled // -(-num_sampled // chunk_size)))
        owned = (target_pos >= 0).nonzero().squeeze(1)
        pos = target_pos[owned]
        x_own, w_own = x[owned], _take_rows(weight, rows, pos, k)
        state = _prepare(margin, x, x_own, w_own, owned, comm, training)
        target = target_logits(margin, x_own, w_own, step, state)

        generation = workspace.claim()
        run_max = x.new_full((batch,), float("-inf"))
        run_sum = x.new_zeros(batch)
        keep_last = any(ctx.needs_input_grad[:3])
        learn_scale = scale is not None and ctx.needs_input_grad[11]
        run_zsum = x.new_zeros(batch) if learn_scale else None  # sum_j exp(z_ij - run_max) z_ij
        last = None
        for start in range(0, num_sampled, chunk_size):
            tile = _compute_tile(x_scaled, weight, rows, start, min(num_sampled, start + chunk_size),
                                 margin, owned, pos, target, state, workspace)
            new_max = torch.maximum(run_max, tile.logits.amax(0) if tile.colmax is None else tile.colmax)
            if tile.colmax is not None and not learn_scale:
                # one read-only pass for the sum of exp(z - max); the tile keeps its logits, whose
                # exponentials the backward takes block by block, in cache, with the final lse
                tile_sum = x.new_empty(batch)
                kernels.exp_shift(tile.logits, new_max, tile_sum, store=False)
                exps = shifted = tile.logits
            else:
                tile.exps = True
                shifted = tile.logits.sub_(new_max)
                # sum_j e^u u with u = z - max, taken before the tile turns into exponentials
                tile_zsum = _exp_weighted_sum(shifted, workspace) if learn_scale else None
                exps = shifted.exp_()   # in place: the tile now holds exp(z - max)
                tile_sum = exps.sum(0)
            if learn_scale:  # sum_j e^u z = sum_j e^u u + max sum_j e^u
                run_zsum = run_zsum * torch.exp(run_max - new_max) + tile_zsum + new_max * tile_sum
            run_sum = run_sum * torch.exp(run_max - new_max) + tile_sum
            run_max = new_max
            if keep_last and tile.stop == num_sampled:
                last = tile
            del tile, exps, shifted  # drop the tile before the next one exists: one tile alive at a time

        global_max = comm.all_reduce_(run_max.clone(), "max")
        stats = torch.zeros(3 if learn_scale else 2, batch, dtype=x.dtype, device=x.device)
        stats[0] = run_sum * torch.exp(run_max - global_max)
        stats[1, owned] = target
        if learn_scale:
            stats[2] = run_zsum * torch.exp(run_max - global_max)
        comm.all_reduce_(stats, "sum")
        lse = global_max + torch.log(stats[0])
        loss = (lse - stats[1]).mean()
        # dL/ds per unit upstream gradient, from all-reduced rows only: the same bits on every rank
        ctx.has_scale = scale is not None
        ctx.dloss_dscale = ((stats[2] / stats[0] - stats[1]).sum() / (batch * scale)) if learn_scale else None

        ctx.save_for_backward(x, x_scaled, weight)
        ctx.rows, ctx.owned, ctx.pos, ctx.lse = rows, owned, pos, lse
        ctx.margin, ctx.step, ctx.chunk_size, ctx.num_sampled = margin, step, chunk_size, num_sampled
        ctx.state = state
        ctx.last, ctx.last_shift = last, run_max
        ctx.workspace, ctx.generation = workspace, generation
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, x_scaled, weight = ctx.saved_tensors
        rows, owned, pos, lse, margin = ctx.rows, ctx.owned, ctx.pos, ctx.lse, ctx.margin
        scale = grad_loss / x.shape[0]
        normalize, k, state = margin.normalize_weight, margin.subcenters, ctx.state

        workspace = ctx.workspace
        if ctx.workspace.generation != ctx.generation:
            ctx.last = None  # another forward or backward reused the buffers: recompute that tile too
        workspace.claim()
        grad_x_scaled = torch.zeros_like(x_scaled)
        fused = _fused(x_scaled, weight, margin)
        # bf16 rows on the fused path: each block's gradient is rounded into the stored dtype while
        # it is in cache, and no (S, D) fp32 gradient exists (an earlier gradient held in
        # weight.grad for accumulation keeps the fp32 rows, which autograd adds to it)
        narrow = fused and weight.dtype != x.dtype and weight.grad is None and ctx.needs_input_grad[2]
        shape = (ctx.num_sampled * k, x.shape[1])
        if narrow:
            grad_rows = workspace.get("grad_rows_stored", shape, dtype=weight.dtype, device=weight.device)
        elif weight.grad is None:
            # the class-row gradient lives in the workspace from step to step, unless an earlier
            # gradient is still held in weight.grad (accumulation), whose memory it may share
            grad_rows = workspace.get("grad_rows", shape, dtype=x.dtype, device=x.device)
        else:
            grad_rows = x.new_empty(shape)
        with torch.enable_grad():
            x_own = x[owned].detach().requires_grad_()
            w_own = _take_rows(weight, rows, pos, k).detach().requires_grad_()
            target = target_logits(margin, x_own, w_own, ctx.step, state)
        # Targets go through the margin's own derivative, not through the GEMMs: their softmax
        # probability exp(z_y - lse) minus one, known before any tile (z_y is the target logit)
        grad_target = target.detach() - lse[owned]
        if fused:
            kernels.exp_shift(grad_target[None], torch.zeros_like(grad_target), None)
        else:
            grad_target.exp_()
        grad_target.sub_(1.0).mul_(scale)
        grad_x_own, grad_w_own = torch.autograd.grad(target, (x_own, w_own), grad_target)
        grad_w_own = grad_w_own.reshape(-1, k, x.shape[1])
        starts = list(range(0, ctx.num_sampled, ctx.chunk_size))
        for start in reversed(starts):
            stop = min(ctx.num_sampled, start + ctx.chunk_size)
            kept = ctx.last is not None and ctx.last.start == start
            if kept:
                # The kept tile is consumed; a second backward (retain_graph) recomputes it.
                tile, ctx.last = ctx.last, None
            else:
                tile = _compute_tile(x_scaled, weight, rows, start, stop, margin, owned, pos, target.detach(), state, workspace)
            sel = ((pos >= start) & (pos < stop)).nonzero().squeeze(1)
            grad_tile = grad_rows[start * k : stop * k]
            if tile.colmax is not None:
                _backward_fused(tile, grad_tile, x_scaled, grad_x_scaled, lse, ctx.last_shift, scale,
                                owned[sel], pos[sel] - start, grad_w_own[sel, 0], normalize, workspace)
                del tile
                continue
            at = (pos[sel] - start, owned[sel])
            if tile.exps:
                probs = tile.logits.mul_(torch.exp(ctx.last_shift - lse))
            else:
                probs = tile.logits.sub_(lse).exp_()
            probs[at] = 0.0
            probs.mul_(scale)
            if tile.dlogits is not None:
                probs.mul_(tile.dlogits)
            if tile.best is not None:
                probs = _to_subcenter_rows(probs, tile.best, k, workspace)
            if normalize:
                probs.mul_(tile.inv_norm[:, None])
            grad_x_scaled.addmm_(probs.t(), tile.w)
            torch.mm(probs, x_scaled, out=grad_tile)
            # d/dw of (x' . w)/|w| (normalize): remove the component along w, as the norm's derivative does
            if normalize and kernels.applies(grad_tile, tile.w) and grad_tile.dtype == tile.w.dtype == torch.float32:
                kernels.project_rows(grad_tile, tile.w, tile.inv_norm)
            elif normalize:
                coef = _row_dot(tile.w, grad_tile, workspace).mul_(tile.inv_norm.square())
                grad_tile.addcmul_(tile.w, coef[:, None], value=-1.0)
            grad_tile.view(stop - start, k, -1).index_add_(0, pos[sel] - start, grad_w_own[sel])
            del tile, probs

        grad_x = torch.zeros_like(x).index_add_(0, owned, grad_x_own)
        grad_weight = None
        if ctx.needs_input_grad[2]:
            indices = class_row_ids(rows, k) if rows is not None else torch.arange(weight.shape[0], device=weight.device)
            values = grad_rows
            if weight.dtype != grad_rows.dtype and weight.grad is None:
                # autograd would cast the rows to the leaf's dtype into fresh memory each step (the
                # same rounding to nearest); a reused buffer spares the allocation and its page faults
                values = workspace.get("grad_rows_stored", tuple(grad_rows.shape), dtype=weight.dtype,
                                       device=weight.device)
                if weight.dtype == torch.bfloat16 and kernels.applies(grad_rows, values):
                    kernels.to_bf16(grad_rows, values)
                else:
                    values.copy_(grad_rows)
            grad_weight = torch.sparse_coo_tensor(indices[None], values, weight.shape, is_coalesced=True, check_invariants=False)
        grads = (grad_x, grad_x_scaled, grad_weight, None, None, None, None, None, None, None, None)
        if not ctx.has_scale:
            return grads
        return grads + (None if ctx.dloss_dscale is None else grad_loss * ctx.dloss_dscale,)


def class_row_ids(classes: torch.Tensor, k: int) -> torch.Tensor:
    """Shard row indices of the K sub-centers of the given local classes, class by class."""
    if k == 1:
        return classes
    return (classes[:, None] * k + torch.arange(k, device=classes.device)).flatten()


def _take_rows(weight: torch.Tensor, rows: torch.Tensor | None, pos: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(n, D) class rows at sampled positions pos, or (n, K, D) with sub-centers."""
    classes = pos if rows is None else rows[pos]
    w = weight.index_select(0, classes if k == 1 else class_row_ids(classes, k))
    w = w.to(torch.promote_types(w.dtype, torch.float32))  # bf16 / fp16 storage is computed in fp32
    return w if k == 1 else w.view(-1, k, weight.shape[1])


def _to_subcenter_rows(probs: torch.Tensor, best: torch.Tensor, k: int, workspace: Workspace) -> torch.Tensor:
    """(c, B) class gradients -> (c K, B) row gradients, all on each class's arg-max row (max's derivative)."""
    c, batch = probs.shape
    out = workspace.get("tile_rows_grad", (c, k, batch), dtype=probs.dtype, device=probs.device).zero_()
    out.scatter_(1, best[:, None, :], probs[:, None, :])
    return out.view(c * k, batch)


def _exp_weighted_sum(u: torch.Tensor, workspace: Workspace, block: int = 1024) -> torch.Tensor:
    """(c, B) -> (B,) column sums of exp(u) * u, through one reused (block, B) scratch."""
    out = u.new_zeros(u.shape[1])
    for lo in range(0, u.shape[0], block):
        hi = min(u.shape[0], lo + block)
        scratch = torch.exp(u[lo:hi], out=workspace.get("exp_weighted", (hi - lo, u.shape[1]), dtype=u.dtype, device=u.device))
        out.add_(scratch.mul_(u[lo:hi]).sum(0))
    return out


def _row_dot(a: torch.Tensor, b: torch.Tensor, workspace: Workspace, block: int = 4096) -> torch.Tensor:
    """Row-wise dot products of two (n, D) tensors through one reused (block, D) scratch."""
    out = a.new_empty(a.shape[0])
    for lo in range(0, a.shape[0], block):
        hi = min(a.shape[0], lo + block)
        prod = workspace.get("row_dot", (hi - lo, a.shape[1]), dtype=a.dtype, device=a.device)
        torch.sum(torch.mul(a[lo:hi], b[lo:hi], out=prod), 1, out=out[lo:hi])
    return out


def _compute_tile(x_scaled, weight, rows, start, stop, margin, owned, pos, target, state, workspace) -> _Tile:
    """Logits of the sampled classes [start, stop) (their K rows each), margin targets in place."""
    opts = dict(dtype=x_scaled.dtype, device=x_scaled.device)
    k = margin.subcenters
    n = (stop - start) * k
    ids = None if rows is None else class_row_ids(rows[start:stop], k)
    if _fused(x_scaled, weight, margin):
        return _compute_tile_fused(x_scaled, weight, ids, start, stop, margin, owned, pos, target, workspace)
    if weight.dtype != x_scaled.dtype:  # bf16 / fp16 storage: gather, then widen into the tile's dtype
        stored = weight[start * k : stop * k] if ids is None else torch.index_select(
            weight, 0, ids, out=workspace.get("tile_w_stored", (n, weight.shape[1]), dtype=weight.dtype, device=weight.device))
        w = workspace.get("tile_w", (n, weight.shape[1]), **opts).copy_(stored)
    elif ids is None:
        w = weight[start * k : stop * k]
    else:
        w = torch.index_select(weight, 0, ids, out=workspace.get("tile_w", (n, weight.shape[1]), **opts))
    # classes x batch: the layout in which all three GEMMs run fastest on CPU
    logits = torch.mm(w, x_scaled.t(), out=workspace.get("tile_logits", (n, x_scaled.shape[0]), **opts))
    inv_norm = None
    if margin.normalize_weight:
        inv_norm = row_norm(w).reciprocal_()
        logits.mul_(inv_norm[:, None])
    best = dlogits = None
    if k > 1:
        logits, best = logits.view(stop - start, k, -1).max(1)
    if margin.transforms_negatives:
        logits, dlogits = margin.negative_logits(logits, state)
    sel = ((pos >= start) & (pos < stop)).nonzero().squeeze(1)
    logits[pos[sel] - start, owned[sel]] = target[sel]
    return _Tile(start, stop, w, inv_norm, logits, best, dlogits)


def _fused(x_scaled: torch.Tensor, weight: torch.Tensor, margin: Margin) -> bool:
    """Whether a tile takes the fused CPU kernels (``partial_fc.kernels``): fp32 arithmetic on
    CPU, fp32 or bf16 rows, one row per class and no transform of the negatives (the other
    margins keep the eager path, whose per-tile hooks sit between the fused passes)."""
    return (x_scaled.dtype == torch.float32 and weight.dtype in (torch.float32, torch.bfloat16)
            and margin.subcenters == 1 and not margin.transforms_negatives and kernels.applies(x_scaled, weight))


def _compute_tile_fused(x_scaled, weight, ids, start, stop, margin, owned, pos, target, workspace) -> _Tile:
    """``_compute_tile`` in fused passes, block by block (``_row_blocks``): each block's rows are
    gathered (widened) with their inverse norms, its logits computed, scaled by them and
    max-reduced per column while they are in cache. The max leaves the target entries out (set
    to -inf first) and then takes the margin targets written there."""
    n = stop - start
    inv_norm = x_scaled.new_empty(n) if margin.normalize_weight else None
    logits = workspace.get("tile_logits", (n, x_scaled.shape[0]), dtype=torch.float32, device=x_scaled.device)
    tile = _Tile(start, stop, None, inv_norm, logits, src=weight if ids is not None else weight[start:stop], ids=ids)
    sel = ((pos >= start) & (pos < stop)).nonzero().squeeze(1)
    at = (pos[sel] - start, owned[sel])
    spans, order = _targets_by_block(at[0], x_scaled.shape[1])
    hit_rows, hit_cols = at[0][order], at[1][order]
    colmax = x_scaled.new_full((x_scaled.shape[0],), float("-inf"))
    for lo, hi, w in _row_blocks(tile, inv_norm, workspace):
        z = logits[lo:hi]
        torch.mm(w, x_scaled.t(), out=z)
        span = spans.get(lo)
        if span is not None:
            z[hit_rows[span] - lo, hit_cols[span]] = float("-inf")
        kernels.scale_colmax(z, None if inv_norm is None else inv_norm[lo:hi], colmax, accumulate=True)
    logits[at] = target[sel]
    colmax[at[1]] = torch.maximum(colmax[at[1]], target[sel])
    tile.colmax = colmax
    return tile


def _targets_by_block(rows: torch.Tensor, dim: int) -> tuple[dict[int, slice], torch.Tensor]:
    """A tile's target entries grouped by the gathered block that holds their row (rows: within
    the tile): the stable order that sorts them by row (samples with the same class keep theirs)
    and {block start: slice of that order}."""
    block = gather_block_rows(dim)
    order = torch.argsort(rows, stable=True)
    blocks, counts = torch.unique_consecutive(rows[order] // block, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return {b * block: slice(end - c, end) for b, c, end in zip(blocks.tolist(), counts.tolist(), ends)}, order


def _backward_fused(tile: _Tile, grad_tile, x_scaled, grad_x_scaled, lse, last_shift, scale, cols, rows, grad_targets,
                    normalize: bool, workspace: Workspace) -> None:
    """A fused tile's backward, block by block while each block is in cache: its probabilities
    exp(z - lse) (or the kept exponentials rescaled) times the loss scale and 1/|w| into one
    reused block, the targets' entries zeroed, both GEMMs and the projection on the block's
    gathered rows, the targets' own gradient rows (``grad_targets``) added, and, with bf16
    ``grad_tile``, the rounding into the stored dtype. rows, cols: the tile's target entries."""
    batch, dim = x_scaled.shape
    n = tile.stop - tile.start
    if tile.exps:  # exp(z - last_shift) exp(last_shift - lse)
        col, shift = torch.exp(last_shift - lse).mul_(scale), None
    else:
        col, shift = torch.ones_like(lse).mul_(scale), lse
    block = min(n, gather_block_rows(dim))
    # a tile of several blocks writes each block's probabilities into one reused block, which
    # stays in cache (in place, every block would go back to memory); a one-block tile is in cache
    probs = None if block == n else workspace.get("tile_probs", (block, batch), dtype=torch.float32,
                                                  device=x_scaled.device)
    narrow = grad_tile.dtype != torch.float32
    grad_block = workspace.get("grad_block", (block, dim), dtype=torch.float32, device=x_scaled.device) if narrow else None
    spans, order = _targets_by_block(rows, dim)
    hit_rows, hit_cols, hit_grads = rows[order], cols[order], grad_targets[order]
    inv_norm = tile.inv_norm if normalize else None
    for lo, hi, w in _row_blocks(tile, None, workspace):
        p = tile.logits[lo:hi] if probs is None else probs[: hi - lo]
        kernels.scale_tile(tile.logits[lo:hi], None if inv_norm is None else inv_norm[lo:hi], col, shift=shift,
                           out=None if probs is None else p)
        span = spans.get(lo)
        if span is not None:
            p[hit_rows[span] - lo, hit_cols[span]] = 0.0
        grad_x_scaled.addmm_(p.t(), w)
        g = grad_block[: hi - lo] if narrow else grad_tile[lo:hi]
        torch.mm(p, x_scaled, out=g)
        # d/dw of (x' . w)/|w|: remove the component along w, as the norm's derivative does
        if normalize:
            kernels.project_rows(g, w, inv_norm[lo:hi])
        if span is not None:
            g.index_add_(0, hit_rows[span] - lo, hit_grads[span])
        if narrow:
            kernels.to_bf16(g, grad_tile[lo:hi])


def gather_block_rows(dim: int) -> int:
    """Rows per gathered block of a fused tile: 512 KiB of fp32 rows, which stay in the core's
    cache from the gather through the GEMMs that read them (and, in the backward, the
    projection of the gradient rows the second GEMM has just written)."""
    return max(1, GATHER_BLOCK_BYTES // (4 * dim))


def _row_blocks(tile: _Tile, inv_norm: torch.Tensor | None, workspace: Workspace):
    """(lo, hi, rows) over a fused tile's rows in blocks of ``gather_block_rows``: rows is the
    (hi - lo, D) fp32 block, a view of an fp32 source read in place or gathered (widened) into
    one reused buffer; inv_norm given: 1/|w| of each block written into inv_norm[lo:hi]."""
    src, ids, n = tile.src, tile.ids, tile.stop - tile.start
    direct = ids is None and src.dtype == torch.float32
    block = gather_block_rows(src.shape[1])
    buf = None if direct else workspace.get("tile_w", (min(n, block), src.shape[1]), dtype=torch.float32,
                                            device=src.device)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        norms = None if inv_norm is None else inv_norm[lo:hi]
        if direct:
            rows = src[lo:hi]
            if norms is not None:
                kernels.gather_rows(rows, None, None, norms)
        else:
            rows = buf[: hi - lo]
            kernels.gather_rows(src if ids is not None else src[lo:hi], None if ids is None else ids[lo:hi], rows, norms)
        yield lo, hi, rows


def sharded_margin_ce(
    x: torch.Tensor, x_scaled: torch.Tensor, weight: torch.Tensor, *, rows: torch.Tensor | None,
    target_pos: torch.Tensor, margin: Margin, step: int, comm: Collectives, chunk_size: int, workspace: Workspace,
    training: bool = False,
) -> torch.Tensor:
    """Mean margin cross-entropy of the global batch over the classes of all ranks.

    x: (B, D) global embeddings; x_scaled: ``margin.scale_features(x)``; weight: (n, D) this
    rank's shard ((classes x K, D) with K = margin.subcenters); rows: (S,) sorted sampled local
    class indices, or None for all classes; target_pos: (B,) position of each label in the
    sampled classes, -1 where another rank owns the label. workspace: buffers reused across
    calls (see ``Workspace``). training: lets ``margin.prepare`` update its running statistics.
    A margin with a learned scale (``margin.learned_scale()``) receives its exact gradient here,
    the same on every rank. Returns the same scalar on every rank.
    """
    scale = margin.learned_scale()
    extra = () if scale is None else (scale,)
    return ShardedMarginCE.apply(x, x_scaled, weight, rows, target_pos, margin, step, comm, chunk_size, workspace, training,
                                 *extra)
