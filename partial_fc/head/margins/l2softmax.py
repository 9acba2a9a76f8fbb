"""L2-constrained softmax (Ranjan et al., 2017): features L2-normalised then scaled to alpha,
class weights unconstrained: logits W_j . (alpha x/|x|).

The paper's lower bound for alpha is log(p (C - 2) / (1 - p)) for a target probability p over
C classes; at p = 0.9 the default 16 clears it for C up to e^16 / 9 + 2 = 9.87 x 10^5 (a
million classes need alpha >= 16.01)."""

from __future__ import annotations

from partial_fc.head.margins.base import Margin, row_norm


class L2Softmax(Margin):
    normalize_weight = False

    def __init__(self, *, alpha: float = 16.0) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"l2softmax alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def scale_features(self, x):
        return x * (self.alpha / row_norm(x))[:, None]

    def target_logit(self, cos, *, x_norm, w_norm, step):
        return self.alpha * w_norm * cos

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
