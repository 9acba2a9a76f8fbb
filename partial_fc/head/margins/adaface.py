"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to the feature norm, a proxy of image
quality. Paper/official defaults s=64, m=0.4, h=0.333, eps=1e-3.

With n_i = clip(|x_i|, 0.001, 100) (detached), mu and sigma the EMA of the batch mean and
(unbiased) std of n over the **global** batch:
  scaler = clip((n - mu) / (sigma + eps) * h, -1, 1)
  target = s (cos(clip(theta + g_angle, eps, pi - eps)) - g_add),  g_angle = -m scaler,
  g_add = m scaler + m,  theta = arccos(clip(cos, -1 + eps, 1 - eps)).
mu <- t_alpha mean + (1 - t_alpha) mu (same for sigma), updated in training only, before use,
from initial values 20 and 100 (official code). t_alpha: the paper's momentum 0.01; the official
code's constructor default is 1.0 (plain batch statistics). Negatives keep s cos theta_j (the
official code also clips them to 1 - eps; that only matters at |cos| > 0.999).
"""

from __future__ import annotations

import math

import torch

from partial_fc.head.margins.base import ScaledCosineMargin


class AdaFace(ScaledCosineMargin):
    def __init__(self, *, scale: float = 64.0, margin: float = 0.4, h: float = 0.333, t_alpha: float = 0.01,
                 eps: float = 1e-3) -> None:
        super().__init__(scale=scale)
        if not 0.0 <= margin <= 2.0:
            raise ValueError(f"adaface margin must be in [0, 2], got {margin}")
        if not 0.0 <= h <= 10.0:
            raise ValueError(f"adaface h must be in [0, 10], got {h}")
        if not 0.0 < t_alpha <= 1.0:
            raise ValueError(f"adaface t_alpha must be in (0, 1], got {t_alpha}")
        if not 0.0 < eps < 0.1:
            raise ValueError(f"adaface eps must be in (0, 0.1), got {eps}")
        self.margin, self.h, self.t_alpha, self.eps = float(margin), float(h), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def safe_norms(self, x_norm: torch.Tensor) -> torch.Tensor:
        return x_norm.detach().clamp(0.001, 100.0)

    @torch.no_grad()
    def prepare(self, x, *, x_norm, target_cos, training):
        if training:
            norms = self.safe_norms(x_norm).to(self.batch_mean.dtype)
            a = self.t_alpha
            self.batch_mean.copy_(a * norms.mean() + (1 - a) * self.batch_mean)
            std = norms.std() if norms.shape[0] > 1 else norms.new_zeros(())
            self.batch_std.copy_(a * std + (1 - a) * self.batch_std)
        return {"mean": self.batch_mean.clone(), "std": self.batch_std.clone()}

    def target_logit(self, cos, *, x_norm, w_norm, step, state=None):
        mean, std = (state["mean"], state["std"]) if state is not None else (self.batch_mean, self.batch_std)
        scaler = ((self.safe_norms(x_norm) - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        theta = torch.arccos(cos.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta_m = (theta - self.margin * scaler).clamp(self.eps, math.pi - self.eps)
        return self.scale * (torch.cos(theta_m) - (self.margin * scaler + self.margin))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}, h={self.h}, t_alpha={self.t_alpha}, eps={self.eps}"
