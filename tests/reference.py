"""Independent float64 oracle for the margin softmax losses.

Written from the papers' formulas, sample by sample, with arccos and cos(m theta) evaluated
directly; it shares no code with partial_fc.head. The loss is the mean over samples of
logsumexp_j z_ij - z_{i,y_i} over the given class subset (all classes by default).
"""

from __future__ import annotations

import math

import torch


def _psi(theta: torch.Tensor, m: int) -> torch.Tensor:
    k = min(int(math.floor(float(theta.detach()) * m / math.pi)), m - 1)
    return (-1) ** k * torch.cos(m * theta) - 2 * k


def _lambda(step: int, base: float, gamma: float, power: float, minimum: float) -> float:
    return 0.0 if base <= 0 else max(minimum, base * (1 + gamma * step) ** (-power))


def target_logit(name: str, params: dict, x: torch.Tensor, w: torch.Tensor, step: int) -> torch.Tensor:
    xn, wn = x.norm(), w.norm()
    cos = (x @ w) / (xn * wn)
    theta = torch.arccos(cos.clamp(-1, 1))
    s = params.get("scale", 64.0)
    if name == "softmax":
        return x @ w
    if name == "lsoftmax":
        lam = _lambda(step, params.get("lambda_base", 0.0), params.get("lambda_gamma", 0.12),
                      params.get("lambda_power", 1.0), params.get("lambda_min", 0.0))
        return xn * wn * (lam * cos + _psi(theta, params.get("m", 4))) / (1 + lam)
    if name == "sphereface":
        lam = _lambda(step, params.get("lambda_base", 1000.0), params.get("lambda_gamma", 0.12),
                      params.get("lambda_power", 1.0), params.get("lambda_min", 5.0))
        return xn * (lam * cos + _psi(theta, params.get("m", 4))) / (1 + lam)
    if name == "l2softmax":
        return params.get("alpha", 16.0) * (x / xn) @ w
    if name == "normface":
        return s * cos
    if name == "cosface":
        return s * (cos - params.get("margin", 0.35))
    if name in ("arcface", "combined"):
        if name == "arcface":
            m1, m2, m3 = 1.0, params.get("margin_rad", 0.5), 0.0
        else:
            m1, m2, m3 = params.get("m1", 1.0), params.get("m2_rad", 0.3), params.get("m3", 0.2)
        theta_t = (math.pi - m2) / m1
        if float(theta) <= theta_t:
            return s * (torch.cos(m1 * theta + m2) - m3)
        # beyond theta_t: the line in cos theta through (cos theta_t, -1 - m3)
        return s * (cos - math.cos(theta_t) - 1 - m3)
    raise KeyError(name)


def other_logits(name: str, params: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Plain logits of one sample x (D,) against class rows w (k, D)."""
    xn, wn = x.norm(), w.norm(dim=1)
    if name in ("softmax", "lsoftmax"):
        return w @ x
    if name == "sphereface":
        return (w @ x) / wn
    if name == "l2softmax":
        return params.get("alpha", 16.0) * (w @ (x / xn))
    return params.get("scale", 64.0) * (w @ x) / (wn * xn)


def loss(name: str, params: dict, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
         step: int = 0, classes: list[list[int]] | None = None) -> torch.Tensor:
    """Mean loss; ``classes[i]`` lists the classes in sample i's softmax (default: all)."""
    terms = []
    for i in range(x.shape[0]):
        y = int(labels[i])
        cols = list(range(weight.shape[0])) if classes is None else list(classes[i])
        row = other_logits(name, params, x[i], weight[cols])
        tgt = target_logit(name, params, x[i], weight[y], step)
        j = cols.index(y)
        row = torch.cat([row[:j], tgt[None], row[j + 1 :]])
        terms.append(torch.logsumexp(row, 0) - tgt)
    return torch.stack(terms).mean()
