"""L-Softmax (Liu et al., ICML 2016): target logit |W_y||x| psi(theta_y), others W_j . x.

The paper trains with the target blended as (lambda cos + psi)/(1 + lambda), lambda annealed
from large to small; ``lambda_base=0`` (the default) uses psi alone.
"""

from __future__ import annotations

from partial_fc.head.margins.angular import annealed_lambda, check_anneal, psi
from partial_fc.head.margins.base import Margin


class LSoftmax(Margin):
    normalize_weight = False

    def __init__(self, *, m: int = 4, lambda_base: float = 0.0, lambda_gamma: float = 0.12,
                 lambda_power: float = 1.0, lambda_min: float = 0.0) -> None:
        super().__init__()
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"lsoftmax m must be an integer >= 1, got {m!r}")
        check_anneal(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)
        self.m = m
        self.anneal = dict(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)

    def target_logit(self, cos, *, x_norm, w_norm, step):
        lam = annealed_lambda(step, **self.anneal)
        return x_norm * w_norm * (lam * cos + psi(cos, self.m)) / (1.0 + lam)

    def extra_repr(self) -> str:
        return f"m={self.m}, anneal={self.anneal}"
