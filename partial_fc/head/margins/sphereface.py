"""SphereFace / A-Softmax (Liu et al., CVPR 2017): |W| = 1, logits |x| cos theta_j, target
|x| (lambda cos theta_y + psi(theta_y)) / (1 + lambda) with m = 4 and lambda annealed as in
its Caffe implementation (base 1000, gamma 0.12, power 1, minimum 5). The schedule runs on the
head's training step, which is checkpointed with the head.
"""

from __future__ import annotations

from partial_fc.head.margins.angular import annealed_lambda, check_anneal, psi
from partial_fc.head.margins.base import Margin


class SphereFace(Margin):
    normalize_weight = True

    def __init__(self, *, m: int = 4, lambda_base: float = 1000.0, lambda_gamma: float = 0.12,
                 lambda_power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__()
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"sphereface m must be an integer >= 1, got {m!r}")
        check_anneal(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)
        self.m = m
        self.anneal = dict(base=lambda_base, gamma=lambda_gamma, power=lambda_power, minimum=lambda_min)

    def target_logit(self, cos, *, x_norm, w_norm, step):
        lam = annealed_lambda(step, **self.anneal)
        return x_norm * (lam * cos + psi(cos, self.m)) / (1.0 + lam)

    def extra_repr(self) -> str:
        return f"m={self.m}, anneal={self.anneal}"
