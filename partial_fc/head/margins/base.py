"""The contract every margin fulfils.

A margin softmax is fixed by two things (``Margin`` documents both):
  * the plain logit of every class j:  z_ij = (x'_i . w_j) * (1/|w_j| if normalize_weight else 1),
    with x'_i = ``scale_features(x)_i``;
  * the target logit z_{i,y_i} = ``target_logit(cos theta_{i,y_i}, |x_i|, |w_{y_i}|)``.
Only the target logit is transformed, so the sharded head can compute the B x S plain logits
with one GEMM per chunk and apply the margin to at most B values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-12


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """(n, D) -> (n,) Euclidean norms, clamped away from zero."""
    return torch.linalg.vector_norm(x, dim=1).clamp_min(EPS)


class Margin(nn.Module):
    """Base class: plain logits are unscaled dot products; subclasses override the hooks."""

    #: Divide w_j by its norm in every logit (cosine-based losses).
    normalize_weight: bool = True

    def scale_features(self, x: torch.Tensor) -> torch.Tensor:
        """x' from the raw embeddings x (B, D); differentiable, never in place."""
        return x

    def target_logit(
        self, cos: torch.Tensor, *, x_norm: torch.Tensor, w_norm: torch.Tensor, step: int
    ) -> torch.Tensor:
        """(k,) target logits from cos theta_y, |x| and |w_y| of k samples at training step ``step``."""
        raise NotImplementedError


class ScaledCosineMargin(Margin):
    """Both features and class centers normalised, logits s * cos; subclasses modify the target cos."""

    normalize_weight = True

    def __init__(self, *, scale: float = 64.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)

    def scale_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.scale / row_norm(x))[:, None]

    def target_logit(self, cos, *, x_norm, w_norm, step):
        return self.scale * self.modify(cos)

    def modify(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def check_margin_rad(name: str, value: float, *, upper: float = math.pi) -> float:
    if not 0.0 <= value < upper:
        raise ValueError(f"{name} must be in [0, {upper:.4f}) radians, got {value}")
    return float(value)
