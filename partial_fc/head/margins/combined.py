"""Combined margin (ArcFace paper, Deng et al. 2019, eq. 4): target s (cos(m1 theta + m2) - m3).

m1 is SphereFace's multiplicative angle margin, m2 ArcFace's additive angle margin, m3
CosFace's additive cosine margin; the paper's CM1 is (1.0, 0.3, 0.2). Past
theta_t = (pi - m2)/m1 the target continues as cos theta - cos theta_t - 1 - m3 (continuous,
monotone), the same rule as ``ArcFace``.
"""

from __future__ import annotations

import math

import torch

from partial_fc.head.margins.base import ScaledCosineMargin, check_margin_rad


class Combined(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, m1: float = 1.0, m2_rad: float = 0.3, m3: float = 0.2) -> None:
        super().__init__(scale=scale)
        if not 0.0 < m1 <= 10.0:
            raise ValueError(f"combined m1 must be in (0, 10], got {m1}")
        if not 0.0 <= m3 <= 2.0:
            raise ValueError(f"combined m3 must be in [0, 2], got {m3}")
        self.m1, self.m3 = float(m1), float(m3)
        self.m2_rad = check_margin_rad("combined m2_rad", m2_rad)
        theta_t = (math.pi - self.m2_rad) / self.m1
        self._cos_t = math.cos(theta_t) if theta_t < math.pi else -1.0

    def modify(self, cos):
        # arccos has an infinite slope at +-1; keep the argument strictly inside.
        theta = torch.arccos(cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        inside = torch.cos(self.m1 * theta + self.m2_rad) - self.m3
        beyond = cos - self._cos_t - 1.0 - self.m3
        return torch.where(cos > self._cos_t, inside, beyond)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, m1={self.m1}, m2_rad={self.m2_rad}, m3={self.m3}"
