"""NormFace's agent losses (Wang et al., ACM MM 2017, Sec. 5): C-contrastive and C-triplet.

Each class has an agent W_j, a row of a (C, D) matrix sharded over the ranks like PartialFC's
class centers. Features and agents are L2-normalised (x~, W~); d_ij = |x~_i - W~_j|^2 =
2 - 2 cos_ij. Per sample i with label y_i:

    C-contrastive:  L_i = d_{i,y_i} + sum_{j != y_i} max(0, m - d_ij)
    C-triplet:      L_i = sum_{j != y_i} max(0, m + d_{i,y_i} - d_ij)

and the loss is the mean over the B samples of the global batch.

Rank r owns agents ``class_range(C, N, r)``. For the global batch it computes cos in tiles of
``chunk_size`` classes (at most B x chunk_size values at once), sums each sample's hinge terms
over its own classes, and all-reduces these per-sample partial sums. C-triplet needs
d_{i,y_i} on every rank before the hinge: the owner of y_i computes it and an all-reduce SUM of
B floats (zeros elsewhere) distributes it; the forward's all-reduce also sums the number of
active hinges per sample, which the owner needs for the gradient of d_{i,y_i}.

Collectives (forward): C-contrastive one all-reduce SUM of B; C-triplet one of B and one of 2B.
Backward: none here (the embedding gradient is reduced by the all-gather that made x~).
Gradient of the agents: a sparse COO tensor holding the rows with at least one non-zero
term (a positive of the batch, or an active hinge), in increasing order.
"""

from __future__ import annotations

import torch

from partial_fc.comm.collectives import Collectives

KINDS = ("contrastive", "triplet")


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


class AgentLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_hat, weight, labels, first_class, kind, margin, comm, chunk_size):
        batch, n = x_hat.shape[0], weight.shape[0]
        owned = ((labels >= first_class) & (labels < first_class + n)).nonzero().squeeze(1)
        w_pos = weight[labels[owned] - first_class]
        cos_pos = (x_hat[owned] * w_pos).sum(1) / w_pos.norm(dim=1).clamp_min(1e-12)
        d2_pos = None
        if kind == "triplet":
            d2_pos = x_hat.new_zeros(batch)
            d2_pos[owned] = 2.0 - 2.0 * cos_pos
            comm.all_reduce_(d2_pos, "sum")
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
        ctx.save_for_backward(x_hat, weight, labels)
        ctx.first_class, ctx.kind, ctx.margin, ctx.chunk_size = first_class, kind, margin, chunk_size
        ctx.d2_pos, ctx.active = d2_pos, (stats[1] if kind == "triplet" else None)
        return stats[0].mean()

    @staticmethod
    def backward(ctx, grad_loss):
        x_hat, weight, labels = ctx.saved_tensors
        kind, margin, first_class, n = ctx.kind, ctx.margin, ctx.first_class, weight.shape[0]
        scale = grad_loss / x_hat.shape[0]
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
        grad_weight = None
        if ctx.needs_input_grad[1]:
            idx = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64, device=weight.device)
            val = torch.cat(values) if values else weight.new_zeros(0, weight.shape[1])
            grad_weight = torch.sparse_coo_tensor(idx[None], val, weight.shape, is_coalesced=True, check_invariants=False)
        return grad_x, grad_weight, None, None, None, None, None, None


def agent_loss(x_hat: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, first_class: int, kind: str,
               margin: float, comm: Collectives, chunk_size: int) -> torch.Tensor:
    """Mean agent loss of the global batch. x_hat: (B, D) unit rows; weight: (n, D) this rank's
    agents, classes [first_class, first_class + n); labels: (B,) global class ids."""
    if kind not in KINDS:
        raise ValueError(f"unknown agent loss {kind!r}; choose from {list(KINDS)}")
    return AgentLossFunction.apply(x_hat, weight, labels, first_class, kind, margin, comm, chunk_size)
