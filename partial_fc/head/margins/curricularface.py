"""CurricularFace (Huang et al., CVPR 2020): ArcFace target s cos(theta_y + m) (with the
``ArcFace`` rule past pi - m); a negative j with cos theta_j > cos(theta_y + m) (a hard one)
gets s cos theta_j (t + cos theta_j). Paper defaults s=64, m=0.5 rad.

t is the EMA, momentum 0.01 from 0, of the mean target cosine over the **global** batch,
updated in training before use (official code), a buffer saved with the head. Getting every
sample's cos theta_y to every rank costs one all-reduce SUM of B floats (``needs_target_cos``).
As in the official code, t and the per-sample threshold cos(theta_y + m) are constants in the
backward; the derivative of the hard-negative logit is s (t + 2 cos theta_j).
"""

from __future__ import annotations

import torch

from partial_fc.head.margins.arcface import ArcFace


class CurricularFace(ArcFace):
    needs_target_cos = True
    transforms_negatives = True

    def __init__(self, *, scale: float = 64.0, margin_rad: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__(scale=scale, margin_rad=margin_rad)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"curricularface momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("t", torch.tensor(0.0))

    @torch.no_grad()
    def prepare(self, x, *, x_norm, target_cos, training):
        cos = target_cos.clamp(-1.0, 1.0)
        if training:
            self.t.copy_(self.momentum * cos.mean().to(self.t.dtype) + (1 - self.momentum) * self.t)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        # cos(theta_y + m) itself, not the fallback: the official code's hard-negative mask.
        return {"t": self.t.clone().to(cos.dtype), "threshold": cos * self._cos_m - sin * self._sin_m}

    def negative_logits(self, logits, state):
        # At most three tiles besides the input, one of them a bool mask, and two after return:
        # the bound tests/head/test_memory_bound_modern.py proves. In-place steps on fresh tiles
        # keep it (torch.where would add two more); values are the same bit for bit.
        t = state["t"]
        cos = logits / self.scale
        easy = cos <= state["threshold"][None, :]  # not a hard negative
        deriv = cos.mul(2.0).add_(t).masked_fill_(easy, 1.0)  # t + 2 cos on hard negatives, else 1
        factor = cos.add_(t).masked_fill_(easy, 1.0)  # t + cos on hard negatives, else 1 (cos's memory)
        del easy
        return factor.mul_(logits), deriv

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin_rad={self.margin_rad}, momentum={self.momentum}"
