"""Online triplet mining on a distance block: pure functions, no communication.

``dist`` is (b, B): squared distances from this rank's b anchors (global ids ``anchor_ids``)
to all B samples of the global batch. Each strategy returns (T, 3) int64 global indices
(anchor, positive, negative) of the triplets that enter the loss. Runs under no_grad; the
loss then indexes the differentiable distances with these triplets.
"""

from __future__ import annotations

import torch

STRATEGIES = ("semihard", "batch_hard", "batch_all")
FALLBACKS = ("hardest", "easiest")


def _masks(labels: torch.Tensor, anchor_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[anchor_ids][:, None] == labels[None, :]
    not_self = anchor_ids[:, None] != torch.arange(labels.shape[0], device=labels.device)[None, :]
    return same & not_self, ~same


@torch.no_grad()
def mine_triplets(dist: torch.Tensor, labels: torch.Tensor, anchor_ids: torch.Tensor, *, strategy: str,
                  margin: float, fallback: str = "hardest", block_bytes: int = 1 << 26) -> torch.Tensor:
    """Triplets of the given strategy (see docs/losses.md for the rules)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}; choose from {list(STRATEGIES)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown semihard fallback {fallback!r}; choose from {list(FALLBACKS)}")
    pos, neg = _masks(labels, anchor_ids)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    if strategy == "batch_hard":
        has = pos.any(1) & neg.any(1)
        p = torch.where(pos, dist, -inf).argmax(1)
        n = torch.where(neg, dist, inf).argmin(1)
        return torch.stack([anchor_ids, p, n], 1)[has]
    # semihard and batch_all look at (anchor, positive, negative) cubes: anchors in blocks
    batch = dist.shape[1]
    per_anchor = max(1, batch * batch * (dist.element_size() + 2))
    step = max(1, block_bytes // per_anchor)
    out = []
    for lo in range(0, dist.shape[0], step):
        hi = min(dist.shape[0], lo + step)
        d, pm, nm, ids = dist[lo:hi], pos[lo:hi], neg[lo:hi], anchor_ids[lo:hi]
        if strategy == "batch_all":
            cube = pm[:, :, None] & nm[:, None, :] & (margin + d[:, :, None] - d[:, None, :] > 0)
            a, p, n = cube.nonzero(as_tuple=True)
            out.append(torch.stack([ids[a], p, n], 1))
            continue
        a, p = pm.nonzero(as_tuple=True)          # every anchor-positive pair
        dn, dap = d[a], d[a, p]                    # (pairs, B), (pairs,)
        negs = nm[a]
        farther = torch.where(negs & (dn > dap[:, None]), dn, inf)
        n = farther.argmin(1)
        none = torch.isinf(farther.gather(1, n[:, None]).squeeze(1))
        if fallback == "hardest":
            alt = torch.where(negs, dn, inf).argmin(1)
        else:                                      # TF-Addons: the farthest negative
            alt = torch.where(negs, dn, -inf).argmax(1)
        n = torch.where(none, alt, n)
        keep = negs.any(1)
        out.append(torch.stack([ids[a], p, n], 1)[keep])
    if not out:
        return torch.zeros(0, 3, dtype=torch.int64, device=dist.device)
    return torch.cat(out)
