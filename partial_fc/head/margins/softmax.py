"""Plain bias-free softmax: logits W_j . x, no margin."""

from __future__ import annotations

from partial_fc.head.margins.base import Margin


class Softmax(Margin):
    normalize_weight = False

    def target_logit(self, cos, *, x_norm, w_norm, step):
        return cos * x_norm * w_norm
