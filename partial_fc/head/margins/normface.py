"""NormFace (Wang et al., ACM MM 2017): normalised features and weights, logits s cos theta."""

from __future__ import annotations

from partial_fc.head.margins.base import ScaledCosineMargin


class NormFace(ScaledCosineMargin):
    def modify(self, cos):
        return cos
