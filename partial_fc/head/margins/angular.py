"""The multiplicative angular margin psi(theta) of L-Softmax and SphereFace, and its annealing.

psi(theta) = (-1)^k cos(m theta) - 2k  for theta in [k pi/m, (k+1) pi/m], k = 0..m-1,
a monotonically decreasing extension of cos(m theta) to [0, pi]. cos(m theta) is evaluated
as the Chebyshev polynomial T_m(cos theta), so the gradient is exact and finite everywhere
(no arccos in the differentiable path; k is piecewise constant).
"""

from __future__ import annotations

import math

import torch

from partial_fc.head.margins.base import Margin


def chebyshev(cos: torch.Tensor, m: int) -> torch.Tensor:
    """T_m(cos theta) = cos(m theta)."""
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * cos * cur - prev
    return cur


def psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    theta = torch.arccos(cos.detach().clamp(-1.0, 1.0))
    k = torch.floor(m * theta / math.pi).clamp(max=m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev(cos, m) - 2.0 * k


def annealed_lambda(step: int, *, base: float, gamma: float, power: float, minimum: float) -> float:
    """lambda = max(minimum, base * (1 + gamma * step)^(-power)), the schedule of the
    L-Softmax/SphereFace Caffe implementations; the target logit is (lambda cos + psi)/(1 + lambda)."""
    if base <= 0:
        return 0.0
    return max(minimum, base * (1.0 + gamma * step) ** (-power))


def check_anneal(*, base: float, gamma: float, power: float, minimum: float) -> None:
    for name, value in (("lambda_base", base), ("lambda_gamma", gamma), ("lambda_power", power), ("lambda_min", minimum)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class AngularMargin(Margin):
    """Shared by L-Softmax and SphereFace: the integer multiplicative margin m and the annealed
    lambda blend of the target, (lambda cos + psi) / (1 + lambda), scaled by ``target_scale``."""

    name = "angular"

    def __init__(self, *, m: int, lambda_base: float, lambda_gamma: float, lambda_power: float,
                 lambda_min: float) -> None:
        super().__init__()
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"{self.name} m must be an integer >= 1, got {m!r}")
        check_anneal(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)
        self.m = m
        self.anneal = dict(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)

    def target_scale(self, x_norm: torch.Tensor, w_norm: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target_logit(self, cos, *, x_norm, w_norm, step):
        lam = annealed_lambda(step, **self.anneal)
        return self.target_scale(x_norm, w_norm) * (lam * cos + psi(cos, self.m)) / (1.0 + lam)

    def extra_repr(self) -> str:
        return f"m={self.m}, anneal={self.anneal}"
