"""NormFace's agent losses (Wang et al., ACM MM 2017): C-contrastive and C-triplet.

Each class has an agent W_j, a row of a (C, D) matrix sharded over the ranks like PartialFC's
class centers. Features and agents are L2-normalised (x~, W~), no scale; d_ij = |x~_i - W~_j|^2
= 2 - 2 cos_ij, the *squared* distance. Per sample i with label y_i:

    C-contrastive:                L_i = d_{i,y_i} + sum_{j != y_i} max(0, m - d_ij)
    C-triplet, all (default):     L_i = sum_{j != y_i} max(0, m + d_{i,y_i} - d_ij)
    C-triplet, hardest:           L_i = max(0, m + d_{i,y_i} - min_{j != y_i} d_ij)

and the loss is the mean over the B samples of the global batch. These are the authors' Caffe
layers as configured by their released prototxts (see docs/losses.md for the citations):
``GeneralContrastiveLoss`` with positive_margin 0, negative_margin 1 and ``GeneralTripletLoss``
with margin 0.8, hardest_only true, each summing over the agents and dividing by the batch size.
The hardest agent is the nearest other agent, the lowest class id on ties, as the Caffe loop.

Rank r owns agents ``class_range(C, N, r)``. For the global batch it computes cos in tiles of
``chunk_size`` classes (at most B x chunk_size values at once). C-triplet needs d_{i,y_i} on
every rank first: the owner of y_i computes it and an all-reduce SUM of B floats (zeros
elsewhere) distributes it.

Collectives (forward), besides the all-gather of the embeddings:
  C-contrastive: one all-reduce SUM of B (per-sample partial sums);
  C-triplet all: SUM of B (d_{i,y_i}) and SUM of 2B (partial sums, number of active hinges,
                 which the owner of y_i needs for the gradient of d_{i,y_i});
  C-triplet hardest: SUM of B (d_{i,y_i}), MAX of B (the largest hinge) and MAX of B int64
                 (minus the id of the agent reaching it, so the lowest id wins across ranks).
Backward: none here (the embedding gradient is reduced by the all-gather that made x~). The
hardest C-triplet's backward touches only the B hardest agents and the positives: no tiles.
Gradient of the agents: a sparse COO tensor holding the rows with at least one non-zero term
(a positive of the batch, or an active hinge), in increasing order.
"""

from __future__ import annotations

import torch

from partial_fc.comm.collectives import Collectives

KINDS = ("contrastive", "triplet")
NEGATIVES = ("all", "hardest")


def _tile(x_hat: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, first_class: int, lo: int, hi: int):
    w = weight[lo:hi]
    inv_norm = w.norm(dim=1).clamp_min(1e-12).reciprocal()
    cos = (x_hat @ w.t()) * inv_norm[None, :]
    target = labels[:, None] == torch.arange(first_class + lo, first_class + hi, device=labels.device)[None, :]
    return w, inv_norm, 2.0 - 2.0 * cos, target


def _hinge(kind: str, margin: float, d2: torch.Tensor, target: torch.Tensor, d2_pos: torch.Tensor | None):
    if kind == "contrastive":
        h = margin - d2
    else:
        h = margin + d2_pos[:, None] - d2
    return h.clamp_min(0.0).masked_fill(target, 0.0)


def _hardest(x_hat, weight, labels, first_class, margin, d2_pos, comm, chunk_size):
    """(B,) largest m + d_pos - d_ij over all other agents (-inf if there is none) and (B,)
    the global id of the agent reaching it; both identical on every rank."""
    batch, n = x_hat.shape[0], weight.shape[0]
    best = x_hat.new_full((batch,), float("-inf"))
    best_id = torch.full((batch,), -1, dtype=torch.int64, device=x_hat.device)
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        _, _, d2, target = _tile(x_hat, weight, labels, first_class, lo, hi)
        value, index = (margin + d2_pos[:, None] - d2).masked_fill_(target, float("-inf")).max(1)
        better = value > best  # strict: an earlier tile (lower id) keeps a tie
        best = torch.where(better, value, best)
        best_id = torch.where(better, index + (first_class + lo), best_id)
        del d2, target
    top = comm.all_reduce_(best.clone(), "max")
    lowest = torch.iinfo(torch.int64).min
    minus_id = comm.all_reduce_(torch.where(best == top, -best_id, lowest), "max")
    return top, -minus_id


def _pair_gradients(x_hat, weight, samples, rows, coef, grad_x):
    """Add the gradient of sum_k coef_k cos(x~_{samples_k}, W_{rows_k}) to grad_x; return the
    touched local rows (sorted, unique) and the gradient w.r.t. those rows of W."""
    touched, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    w = weight[touched]
    inv_norm = w.norm(dim=1).clamp_min(1e-12).reciprocal()
    w_hat = w * inv_norm[:, None]
    grad_x.index_add_(0, samples, coef[:, None] * w_hat[inverse])
    grad_w_hat = x_hat.new_zeros(touched.shape[0], x_hat.shape[1])
    grad_w_hat.index_add_(0, inverse, coef[:, None] * x_hat[samples])
    # through W~ = W / |W|: remove the component along W~, divide by |W|
    grad_w = (grad_w_hat - w_hat * (w_hat * grad_w_hat).sum(1, keepdim=True)) * inv_norm[:, None]
    return touched, grad_w


class AgentLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_hat, weight, labels, first_class, kind, negatives, margin, comm, chunk_size):
        batch, n = x_hat.shape[0], weight.shape[0]
        owned = ((labels >= first_class) & (labels < first_class + n)).nonzero().squeeze(1)
        w_pos = weight[labels[owned] - first_class]
        cos_pos = (x_hat[owned] * w_pos).sum(1) / w_pos.norm(dim=1).clamp_min(1e-12)
        d2_pos = None
        if kind == "triplet":
            d2_pos = x_hat.new_zeros(batch)
            d2_pos[owned] = 2.0 - 2.0 * cos_pos
            comm.all_reduce_(d2_pos, "sum")
        ctx.save_for_backward(x_hat, weight, labels)
        ctx.first_class, ctx.kind, ctx.negatives = first_class, kind, negatives
        ctx.margin, ctx.chunk_size = margin, chunk_size
        if negatives == "hardest":
            top, hardest = _hardest(x_hat, weight, labels, first_class, margin, d2_pos, comm, chunk_size)
            ctx.active, ctx.hardest = top > 0, hardest
            return top.clamp_min(0.0).mean()
        stats = x_hat.new_zeros(2 if kind == "triplet" else 1, batch)
        if kind == "contrastive":
            stats[0, owned] = 2.0 - 2.0 * cos_pos
        for lo in range(0, n, chunk_size):
            _, _, d2, target = _tile(x_hat, weight, labels, first_class, lo, min(n, lo + chunk_size))
            h = _hinge(kind, margin, d2, target, d2_pos)
            stats[0] += h.sum(1)
            if kind == "triplet":
                stats[1] += (h > 0).sum(1)
            del d2, h, target
        comm.all_reduce_(stats, "sum")
        ctx.d2_pos, ctx.active = d2_pos, (stats[1] if kind == "triplet" else None)
        return stats[0].mean()

    @staticmethod
    def backward(ctx, grad_loss):
        x_hat, weight, labels = ctx.saved_tensors
        if ctx.negatives == "hardest":
            grad_x, grad_weight = _hardest_backward(ctx, x_hat, weight, labels, grad_loss / x_hat.shape[0])
        else:
            grad_x, grad_weight = _all_backward(ctx, x_hat, weight, labels, grad_loss / x_hat.shape[0])
        return grad_x, (grad_weight if ctx.needs_input_grad[1] else None), None, None, None, None, None, None, None


def _sparse(weight: torch.Tensor, rows: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64, device=weight.device)
    val = torch.cat(values) if values else weight.new_zeros(0, weight.shape[1])
    return torch.sparse_coo_tensor(idx[None], val, weight.shape, is_coalesced=True, check_invariants=False)


def _hardest_backward(ctx, x_hat, weight, labels, scale):
    """L_i = m + d_{i,y_i} - d_{i,j*} where active: dL/dcos is -2 at y_i and +2 at j*."""
    first_class, n = ctx.first_class, weight.shape[0]

    def active_and_mine(ids: torch.Tensor) -> torch.Tensor:
        return (ctx.active & (ids >= first_class) & (ids < first_class + n)).nonzero().squeeze(1)

    pos, neg = active_and_mine(labels), active_and_mine(ctx.hardest)
    samples = torch.cat([pos, neg])
    rows = torch.cat([labels[pos], ctx.hardest[neg]]) - first_class
    two = (2.0 * scale).to(x_hat.dtype)
    coef = torch.cat([(-two).expand(pos.shape[0]), two.expand(neg.shape[0])])
    grad_x = torch.zeros_like(x_hat)
    if samples.numel() == 0:
        return grad_x, _sparse(weight, [], [])
    touched, grad_w = _pair_gradients(x_hat, weight, samples, rows, coef, grad_x)
    return grad_x, _sparse(weight, [touched], [grad_w])


def _all_backward(ctx, x_hat, weight, labels, scale):
    kind, margin, first_class, n = ctx.kind, ctx.margin, ctx.first_class, weight.shape[0]
    # dL/dcos: d = 2 - 2 cos, so a term +d contributes -2 and a term -d contributes +2.
    if kind == "contrastive":
        g_pos = (-2.0 * scale).expand(x_hat.shape[0])
    else:
        g_pos = -2.0 * scale * ctx.active   # d_{i,y_i} appears in every active hinge of sample i
    grad_x = torch.zeros_like(x_hat)
    rows, values = [], []
    for lo in range(0, n, ctx.chunk_size):
        hi = min(n, lo + ctx.chunk_size)
        w, inv_norm, d2, target = _tile(x_hat, weight, labels, first_class, lo, hi)
        g = (_hinge(kind, margin, d2, target, ctx.d2_pos) > 0).to(x_hat.dtype) * (2.0 * scale)
        g = torch.where(target, g_pos[:, None].to(g.dtype), g)
        del d2
        touched = (g != 0).any(0).nonzero().squeeze(1)
        if touched.numel() == 0:
            continue
        g = g[:, touched]
        w_hat = w[touched] * inv_norm[touched, None]
        grad_x.addmm_(g, w_hat)
        grad_w_hat = g.t() @ x_hat
        # through W~ = W / |W|: remove the component along W~, divide by |W|
        grad_w = (grad_w_hat - w_hat * (w_hat * grad_w_hat).sum(1, keepdim=True)) * inv_norm[touched, None]
        rows.append(touched + lo)
        values.append(grad_w)
    return grad_x, _sparse(weight, rows, values)


def agent_loss(x_hat: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, first_class: int, kind: str,
               margin: float, comm: Collectives, chunk_size: int, negatives: str = "all") -> torch.Tensor:
    """Mean agent loss of the global batch. x_hat: (B, D) unit rows; weight: (n, D) this rank's
    agents, classes [first_class, first_class + n); labels: (B,) global class ids.
    negatives: "all" sums the hinge over every other agent; "hardest" (C-triplet only) keeps
    the nearest other agent's."""
    if kind not in KINDS:
        raise ValueError(f"unknown agent loss {kind!r}; choose from {list(KINDS)}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got {negatives!r}")
    if negatives == "hardest" and kind != "triplet":
        raise ValueError(f"negatives='hardest' applies to the C-triplet loss only, got kind {kind!r}")
    return AgentLossFunction.apply(x_hat, weight, labels, first_class, kind, negatives, margin, comm, chunk_size)
