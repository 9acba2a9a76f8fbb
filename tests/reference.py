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
        lam = _lambda(step, params.get("lambda_base", 1000.0), params.get("lambda_gamma", 2.5e-5),
                      params.get("lambda_power", 35.0), params.get("lambda_min", 0.0))
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
        if float(theta.detach()) <= theta_t:
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


# --- Modern margins (Sub-center ArcFace, AdaFace, CurricularFace, MagFace) -------------------
# Written from the papers' formulas and the official code's update order, per sample, in
# float64. ``state`` holds the EMA buffers before the step; the updated ones are returned.
MODERN = ("subcenter_arcface", "adaface", "curricularface", "magface")


def _arc(theta: torch.Tensor, cos: torch.Tensor, m) -> torch.Tensor:
    """cos(theta + m), continued past pi - m by the line cos - cos(pi - m) - 1 (m may carry a gradient)."""
    if float(theta.detach()) <= math.pi - float(m.detach() if isinstance(m, torch.Tensor) else m):
        return torch.cos(theta + m)
    m = m if isinstance(m, torch.Tensor) else torch.tensor(m, dtype=cos.dtype)
    return cos - torch.cos(math.pi - m) - 1


def modern_loss(name: str, params: dict, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                state: dict | None = None, training: bool = True,
                classes: list[list[int]] | None = None) -> tuple[torch.Tensor, dict]:
    s = params.get("scale", 64.0)
    k = params.get("subcenters", 3) if name == "subcenter_arcface" else 1
    num_classes = weight.shape[0] // k
    state = dict(state or {})
    batch = x.shape[0]

    def cos_row(i: int, cols: list[int]) -> torch.Tensor:
        w = weight.view(num_classes, k, -1)[cols]                       # (n, K, D)
        c = (w @ x[i]) / (w.norm(dim=2) * x[i].norm())                   # (n, K)
        return c.max(dim=1).values                                       # max over sub-centers

    if name == "adaface":
        n = [min(max(float(x[i].detach().norm()), 0.001), 100.0) for i in range(batch)]
        if training:
            a = params.get("t_alpha", 0.01)
            mean = sum(n) / batch
            std = math.sqrt(sum((v - mean) ** 2 for v in n) / (batch - 1))
            state["mean"] = a * mean + (1 - a) * state.get("mean", 20.0)
            state["std"] = a * std + (1 - a) * state.get("std", 100.0)
    if name == "curricularface":
        tcos = [float(cos_row(i, [int(labels[i])])[0]) for i in range(batch)]
        if training:
            mom = params.get("momentum", 0.01)
            state["t"] = mom * sum(tcos) / batch + (1 - mom) * state.get("t", 0.0)

    terms = []
    for i in range(batch):
        y = int(labels[i])
        cols = list(range(num_classes)) if classes is None else list(classes[i])
        cos = cos_row(i, cols)
        j = cols.index(y)
        cy = cos[j]
        theta = torch.arccos(cy.clamp(-1, 1))
        row = s * cos
        if name == "subcenter_arcface":
            tgt = s * _arc(theta, cy, params.get("margin_rad", 0.5))
        elif name == "curricularface":
            m = params.get("margin_rad", 0.5)
            tgt = s * _arc(theta, cy, m)
            threshold = math.cos(float(theta) + m)
            t = state["t"]
            row = torch.where(cos > threshold, s * cos * (t + cos), s * cos)  # elementwise per class
        elif name == "magface":
            l_a, u_a = params.get("l_a", 10.0), params.get("u_a", 110.0)
            l_m, u_m = params.get("l_m_rad", 0.45), params.get("u_m_rad", 0.8)
            a = x[i].norm().clamp(l_a, u_a)
            m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
            if params.get("easy_margin", True) and float(cy) <= 0:
                tgt = s * cy  # the official MagLinear's easy margin: no margin at theta >= 90 deg
            else:
                tgt = s * _arc(theta, cy, m)
        elif name == "adaface":
            m, h, eps = params.get("margin", 0.4), params.get("h", 0.333), 1e-3
            n_i = min(max(float(x[i].detach().norm()), 0.001), 100.0)
            scaler = min(max((n_i - state["mean"]) / (state["std"] + eps) * h, -1.0), 1.0)
            theta_a = torch.arccos(cy.clamp(-1 + eps, 1 - eps))
            theta_m = (theta_a - m * scaler).clamp(eps, math.pi - eps)
            tgt = s * (torch.cos(theta_m) - (m * scaler + m))
        else:
            raise KeyError(name)
        row = torch.cat([row[:j], tgt[None], row[j + 1 :]])
        terms.append(torch.logsumexp(row, 0) - tgt)
    loss = torch.stack(terms).mean()
    if name == "magface":
        l_a, u_a = params.get("l_a", 10.0), params.get("u_a", 110.0)
        g = [(lambda a: a / u_a**2 + 1 / a)(x[i].norm().clamp(l_a, u_a)) for i in range(batch)]
        loss = loss + params.get("lambda_g", 35.0) * torch.stack(g).mean()
    return loss, state
