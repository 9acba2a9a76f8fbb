"""NormFace (Wang et al., ACM MM 2017): normalised features and weights, logits s cos theta.

The scale is fixed (``scale``, default 64) unless ``learn_scale``: then s is a parameter of the
margin, initialised to ``scale`` (the authors start at 10), as the authors' Caffe recipe does
(a Scale layer after the cosine layer, kept above ``scale_min`` = 0.01). The effective scale is
max(s, scale_min); its gradient is exact through the sharded head (see ``sharded_ce``: one extra
row of B floats in the forward's fused all-reduce SUM, no extra collective) and identical on
every rank. The parameter is replicated (every rank holds the same value) and dense: step it
with a plain dense optimizer on the already-reduced gradient, without weight decay.
"""

from __future__ import annotations

import torch
from torch import nn

from partial_fc.head.margins.base import ScaledCosineMargin, row_norm


class NormFace(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, learn_scale: bool = False, scale_min: float = 0.01) -> None:
        super().__init__(scale=scale)
        if not isinstance(learn_scale, bool):
            raise ValueError(f"normface learn_scale must be true or false, got {learn_scale!r}")
        if not 0.0 < scale_min <= scale:
            raise ValueError(f"normface scale_min must be in (0, scale={scale}], got {scale_min}")
        self.learn_scale, self.scale_min = learn_scale, float(scale_min)
        if learn_scale:
            self.scale_param = nn.Parameter(torch.tensor(self.scale))

    def learned_scale(self) -> torch.Tensor | None:
        return self.scale_param.clamp_min(self.scale_min) if self.learn_scale else None

    def current_scale(self) -> float | torch.Tensor:
        """s as a constant: the float when fixed, the detached effective parameter when learned."""
        return self.scale_param.detach().clamp_min(self.scale_min) if self.learn_scale else self.scale

    def scale_features(self, x):
        return x * (self.current_scale() / row_norm(x))[:, None]

    def target_logit(self, cos, *, x_norm, w_norm, step, state=None):
        return self.current_scale() * cos

    def modify(self, cos):
        return cos

    def extra_repr(self) -> str:
        if self.learn_scale:
            return f"scale=learned (initial {self.scale}), scale_min={self.scale_min}"
        return f"scale={self.scale}"
