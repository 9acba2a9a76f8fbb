"""L-Softmax (Liu et al., ICML 2016): target logit |W_y||x| psi(theta_y), others W_j . x.

The paper trains with the target blended as (lambda cos + psi)/(1 + lambda), lambda annealed
from large to small; ``lambda_base=0`` (the default) uses psi alone.
"""

from __future__ import annotations

from partial_fc.head.margins.angular import AngularMargin


class LSoftmax(AngularMargin):
    normalize_weight = False
    name = "lsoftmax"

    def __init__(self, *, m: int = 4, lambda_base: float = 0.0, lambda_gamma: float = 0.12,
                 lambda_power: float = 1.0, lambda_min: float = 0.0) -> None:
        super().__init__(m=m, lambda_base=lambda_base, lambda_gamma=lambda_gamma, lambda_power=lambda_power,
                         lambda_min=lambda_min)

    def target_scale(self, x_norm, w_norm):
        return x_norm * w_norm
