"""Independent float64 references written from the papers' formulas with explicit Python
loops over anchors, pairs and triplets (as pytorch-metric-learning's tests do). They share
no code with partial_fc.losses."""

from __future__ import annotations

import torch


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum()


def _pairs(labels):
    n = len(labels)
    return [(a, p) for a in range(n) for p in range(n) if a != p and labels[a] == labels[p]]


def _negatives(labels, a):
    return [j for j in range(len(labels)) if labels[j] != labels[a]]


def mined_triplets(x: torch.Tensor, labels: list[int], strategy: str, margin: float, fallback: str = "hardest"):
    """Sorted list of (a, p, n) the rules in docs/losses.md select."""
    e = unit(x.detach())
    d = [[float(sqdist(e[i], e[j])) for j in range(len(labels))] for i in range(len(labels))]
    out = []
    if strategy == "semihard":
        for a, p in _pairs(labels):
            negs = _negatives(labels, a)
            if not negs:
                continue
            farther = [n for n in negs if d[a][n] > d[a][p]]
            if farther:
                n = min(farther, key=lambda j: d[a][j])
            elif fallback == "hardest":
                n = min(negs, key=lambda j: d[a][j])
            else:
                n = max(negs, key=lambda j: d[a][j])
            out.append((a, p, n))
    elif strategy == "batch_hard":
        for a in range(len(labels)):
            poss = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
            negs = _negatives(labels, a)
            if poss and negs:
                out.append((a, max(poss, key=lambda j: d[a][j]), min(negs, key=lambda j: d[a][j])))
    else:
        for a, p in _pairs(labels):
            for n in _negatives(labels, a):
                if margin + d[a][p] - d[a][n] > 0:
                    out.append((a, p, n))
    return sorted(out)


def triplet_loss(x: torch.Tensor, labels: list[int], strategy: str, margin: float, fallback: str = "hardest"):
    e = unit(x)
    terms = [torch.clamp(margin + sqdist(e[a], e[p]) - sqdist(e[a], e[n]), min=0.0)
             for a, p, n in mined_triplets(x, labels, strategy, margin, fallback)]
    if not terms:
        return x.sum() * 0.0
    total = sum(terms)
    if strategy == "batch_all":
        return total / sum(1 for t in terms if float(t.detach()) > 0)
    return total / len(terms)


def contrastive_loss(x: torch.Tensor, labels: list[int], margin: float):
    e = unit(x)
    terms = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            d = torch.sqrt(sqdist(e[i], e[j]))
            if labels[i] == labels[j]:
                terms.append(0.5 * d ** 2)
            else:
                terms.append(0.5 * torch.clamp(margin - d, min=0.0) ** 2)
    return sum(terms) / len(terms)


def agent_loss(x: torch.Tensor, w: torch.Tensor, labels: list[int], kind: str, margin: float, negatives: str = "all"):
    """NormFace C-contrastive / C-triplet as the authors' Caffe layers compute them (squared
    distances of unit vectors; a sum over the other agents, or only the hardest one: the first
    j in class order with the largest hinge); mean over samples. Also the counts of active and
    inactive hinges (per sample for "hardest")."""
    e, a = unit(x), unit(w)
    total, active, inactive = 0.0, 0, 0
    for i, y in enumerate(labels):
        d_pos = sqdist(e[i], a[y])
        if kind == "contrastive":
            total = total + d_pos
        hinges = []
        for j in range(w.shape[0]):
            if j == y:
                continue
            hinges.append(margin - sqdist(e[i], a[j]) if kind == "contrastive" else margin + d_pos - sqdist(e[i], a[j]))
        if negatives == "hardest":
            hardest = None
            for h in hinges:
                if hardest is None or float(h.detach()) > float(hardest.detach()):
                    hardest = h
            hinges = [] if hardest is None else [hardest]
        for h in hinges:
            if float(h.detach()) > 0:
                total, active = total + h, active + 1
            else:
                inactive += 1
    return total / len(labels), active, inactive
