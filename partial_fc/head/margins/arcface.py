"""ArcFace (Deng et al., CVPR 2019): target s cos(theta_y + m); paper defaults s=64, m=0.5 rad.

cos(theta + m) = cos theta cos m - sin theta sin m, with sin theta = sqrt(1 - cos^2), so the
gradient is the exact derivative (no arccos; finite for |cos| < 1).

Rule when theta + m > pi: cos(theta + m) would rise again with theta, rewarding a worse
angle. Past theta_t = pi - m the target continues as cos theta - cos theta_t - 1, the line
in cos theta that meets cos(theta + m) = -1 at theta_t: continuous and monotone.
(InsightFace switches to cos theta - m sin m there, which is monotone but jumps at theta_t.)
"""

from __future__ import annotations

import math

import torch

from partial_fc.head.margins.base import ScaledCosineMargin, check_margin_rad


class ArcFace(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, margin_rad: float = 0.5) -> None:
        super().__init__(scale=scale)
        self.margin_rad = check_margin_rad("arcface margin_rad", margin_rad)
        self._cos_m, self._sin_m = math.cos(self.margin_rad), math.sin(self.margin_rad)
        self._cos_t = math.cos(math.pi - self.margin_rad)

    def modify(self, cos):
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        inside = cos * self._cos_m - sin * self._sin_m
        beyond = cos - self._cos_t - 1.0
        return torch.where(cos > self._cos_t, inside, beyond)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin_rad={self.margin_rad}"
