"""Shared inputs for the head tests: every margin with parameters that exercise it."""

from __future__ import annotations

import math

import torch

from partial_fc.head.row_init import init_class_rows

# name -> constructor params. Scales are moderate so fp64 comparisons are not dominated by
# one saturated logit; sphereface/lsoftmax are exercised at a step where lambda is small.
MARGINS: dict[str, dict] = {
    "softmax": {},
    "lsoftmax": {"m": 3, "lambda_base": 0.0},  # psi alone: the recipe's lambda would still be ~700 at STEP
    "sphereface": {"m": 4},
    "l2softmax": {"alpha": 8.0},
    "normface": {"scale": 16.0},
    "cosface": {"scale": 16.0, "margin": 0.35},
    "arcface": {"scale": 16.0, "margin_rad": 0.5},
    "combined": {"scale": 16.0, "m1": 0.9, "m2_rad": 0.4, "m3": 0.15},
}
STEP = 400  # sphereface lambda = max(5, 1000 / (1 + 0.12 * 400)) = 20.4
SEED = 7
INIT_STD = 0.5


def global_batch(num_classes: int, dim: int, batch: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 embeddings with varied norms and labels that hit shard boundaries and repeat."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64) * (0.5 + torch.rand(batch, 1, generator=g, dtype=torch.float64))
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    fixed = [0, num_classes - 1, num_classes // 2, num_classes // 3, num_classes // 3]
    labels[: len(fixed)] = torch.tensor(fixed)[:batch]
    return x, labels


def full_weight(num_classes: int, dim: int) -> torch.Tensor:
    return init_class_rows(SEED, 0, num_classes, dim, std=INIT_STD, dtype=torch.float64)


def batch_at_angles(weight: torch.Tensor, labels: torch.Tensor, thetas: list[float], norms: list[float], *,
                    seed: int = 0) -> torch.Tensor:
    """fp64 embeddings x_i with |x_i| = norms[i] at exactly the angle thetas[i] from row labels[i]
    of ``weight``: x_i = |x_i| (cos theta w_hat + sin theta v_hat), v_hat a random unit vector
    orthogonal to w_hat. Puts targets where random batches never go (past pi - m, every psi branch)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for y, theta, norm in zip(labels.tolist(), thetas, norms):
        w_hat = weight[y] / weight[y].norm()
        v = torch.randn(weight.shape[1], generator=g, dtype=torch.float64)
        v = v - (v @ w_hat) * w_hat
        rows.append(norm * (math.cos(theta) * w_hat + math.sin(theta) * v / v.norm()))
    return torch.stack(rows)
