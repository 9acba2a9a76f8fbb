"""MagFace (Meng et al., CVPR 2021): a magnitude-aware angular margin plus a regulariser that
pulls easy (high-quality) samples to larger feature norms. Paper defaults: s=64,
l_a=10, u_a=110, l_m=0.45, u_m=0.8, lambda_g=35.

a = clamp(|x|, l_a, u_a);  m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m;
target s cos(theta_y + m(a)) where cos theta_y > 0, differentiable in a (the margin is a
function of the feature, as in the paper). Loss += lambda_g mean_i g(a_i),
g(a) = a / u_a^2 + 1/a, over the global batch.

Where cos theta_y <= 0 (about half the samples at initialisation), ``easy_margin`` (the
default, as the official ``MagLinear``) leaves the target at s cos theta_y: no margin on a
sample that is still 90 degrees or more from its class. The target then jumps at theta = 90
degrees from -s sin m(a) to 0. ``easy_margin=False`` keeps the margin up to theta = pi - m(a)
and continues past it by the ``ArcFace`` rule (cos theta - cos(pi - m) - 1), continuous and
monotone; at theta = 100 degrees, |x| = 60 (m = 0.625) and s = 64 the two targets differ by
64 (cos 100 deg - cos(100 deg + 0.625 rad)) = 34.8.
"""

from __future__ import annotations

import torch

from partial_fc.head.margins.base import ScaledCosineMargin, check_margin_rad, row_norm


class MagFace(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m_rad: float = 0.45,
                 u_m_rad: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True) -> None:
        super().__init__(scale=scale)
        if not 0.0 < l_a < u_a:
            raise ValueError(f"magface needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.l_m_rad = check_margin_rad("magface l_m_rad", l_m_rad)
        self.u_m_rad = check_margin_rad("magface u_m_rad", u_m_rad)
        if not lambda_g >= 0:
            raise ValueError(f"magface lambda_g must be >= 0, got {lambda_g}")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"magface easy_margin must be true or false, got {easy_margin!r}")
        self.l_a, self.u_a, self.lambda_g = float(l_a), float(u_a), float(lambda_g)
        self.easy_margin = easy_margin

    def magnitude(self, x_norm: torch.Tensor) -> torch.Tensor:
        return x_norm.clamp(self.l_a, self.u_a)

    def margin_rad(self, a: torch.Tensor) -> torch.Tensor:
        return (self.u_m_rad - self.l_m_rad) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m_rad

    def target_logit(self, cos, *, x_norm, w_norm, step, state=None):
        m = self.margin_rad(self.magnitude(x_norm))
        cos_m, sin_m = torch.cos(m), torch.sin(m)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        inside = cos * cos_m - sin * sin_m
        if self.easy_margin:
            return self.scale * torch.where(cos > 0, inside, cos)
        beyond = cos + cos_m - 1.0  # cos theta - cos(pi - m) - 1
        return self.scale * torch.where(cos > -cos_m, inside, beyond)

    def regularizer(self, x):
        a = self.magnitude(row_norm(x))
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a).mean()

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, l_a={self.l_a}, u_a={self.u_a}, l_m_rad={self.l_m_rad}, "
                f"u_m_rad={self.u_m_rad}, lambda_g={self.lambda_g}, easy_margin={self.easy_margin}")
