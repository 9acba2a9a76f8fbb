"""SphereFace / A-Softmax (Liu et al., CVPR 2017): |W| = 1, logits |x| cos theta_j, target
|x| (lambda cos theta_y + psi(theta_y)) / (1 + lambda) with m = 4 and lambda annealed as in
its Caffe implementation (base 1000, gamma 0.12, power 1, minimum 5). The schedule runs on the
head's training step, which is checkpointed with the head.

The gradient is the exact derivative of this target. The Caffe layer's backward is not: it
drops psi' from the class-weight gradient and rescales the target's feature gradient, which
puts it 12-13 % from the exact gradient at lambda = 20 and 33-36 % at lambda = 5 for targets at
60 degrees (docs/losses.md, "SphereFace: the official backward is not the exact gradient").
"""

from __future__ import annotations

from partial_fc.head.margins.angular import AngularMargin


class SphereFace(AngularMargin):
    normalize_weight = True
    name = "sphereface"

    def __init__(self, *, m: int = 4, lambda_base: float = 1000.0, lambda_gamma: float = 0.12,
                 lambda_power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(m=m, lambda_base=lambda_base, lambda_gamma=lambda_gamma, lambda_power=lambda_power,
                         lambda_min=lambda_min)

    def target_scale(self, x_norm, w_norm):
        return x_norm  # |W| = 1
