"""L-Softmax (Liu et al., ICML 2016): target logit |W_y||x| psi(theta_y), others W_j . x.

The target is blended as (lambda cos + psi)/(1 + lambda), lambda annealed from large to small
(``annealed_lambda``). The defaults are the authors' MNIST recipe (m = 4, base 1000,
gamma 2.5e-5, power 35, lambda_min 0): lambda is 421 at step 10^3, 0.41 at 10^4 and 7e-4
at 2 x 10^4.
``lambda_base=0`` uses psi alone from the first step.
"""

from __future__ import annotations

from partial_fc.head.margins.angular import AngularMargin


class LSoftmax(AngularMargin):
    normalize_weight = False
    name = "lsoftmax"

    def __init__(self, *, m: int = 4, lambda_base: float = 1000.0, lambda_gamma: float = 2.5e-5,
                 lambda_power: float = 35.0, lambda_min: float = 0.0) -> None:
        super().__init__(m=m, lambda_base=lambda_base, lambda_gamma=lambda_gamma, lambda_power=lambda_power,
                         lambda_min=lambda_min)

    def target_scale(self, x_norm, w_norm):
        return x_norm * w_norm
