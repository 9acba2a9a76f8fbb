"""CosFace / LMCL (Wang et al., CVPR 2018): target s (cos theta_y - m); paper defaults s=64, m=0.35."""

from __future__ import annotations

from partial_fc.head.margins.base import ScaledCosineMargin


class CosFace(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(scale=scale)
        if not 0.0 <= margin <= 2.0:
            raise ValueError(f"cosface margin must be in [0, 2], got {margin}")
        self.margin = float(margin)

    def modify(self, cos):
        return cos - self.margin

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}"
