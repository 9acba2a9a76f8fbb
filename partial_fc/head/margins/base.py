"""The contract every margin fulfils.

A margin softmax is fixed by two things (``Margin`` documents both):
  * the plain logit of every class j:  z_ij = (x'_i . w_j) * (1/|w_j| if normalize_weight else 1),
    with x'_i = ``scale_features(x)_i``;
  * the target logit z_{i,y_i} = ``target_logit(cos theta_{i,y_i}, |x_i|, |w_{y_i}|)``.
Only the target logit is transformed, so the sharded head can compute the B x S plain logits
with one GEMM per chunk and apply the margin to at most B values.

Optional hooks for the margins that need more (sub-centers, batch statistics, hard-negative
reweighting, a feature-norm regulariser) are documented on ``Margin``; a margin that does not
override them costs the head nothing: no extra pass over a tile, no extra collective.
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
    #: K rows per class (Sub-center ArcFace). The shard then holds (stop - start) * K rows, class
    #: c's at rows [c K, (c + 1) K); a class's logit is the max over its K rows, and its gradient
    #: goes to the arg-max row only. Sampling still decides per class.
    subcenters: int = 1
    #: ``prepare`` needs the target cosine of every sample of the global batch. Only the rank
    #: that owns y_i knows cos theta_{i,y_i}, so this costs the head one extra all-reduce SUM
    #: of B floats per step (the only collective any hook causes).
    needs_target_cos: bool = False
    #: ``negative_logits`` is applied to every logit tile (forward and recomputed in backward).
    transforms_negatives: bool = False

    def prepare(
        self, x: torch.Tensor, *, x_norm: torch.Tensor, target_cos: torch.Tensor | None, training: bool
    ) -> dict[str, torch.Tensor] | None:
        """Called once per step, before any tile, with the detached global batch x (B, D), its
        norms (B,) and, if ``needs_target_cos``, cos theta_{i,y_i} (B,) (else None). Identical
        on every rank, so statistics computed here are identical with no communication. May
        update the margin's buffers (only when ``training``: EMA state that checkpoints with the
        head). Returns the step's constants (treated as constants by the backward), passed as
        ``state=`` to ``target_logit`` and to ``negative_logits``; None (the default) means none."""
        return None

    def negative_logits(
        self, logits: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise transform of a tile of plain logits (c, B) (classes x batch; column i is
        sample i; the target entries are overwritten afterwards). Returns new tensors (z', dz'/dz),
        both (c, B); the head multiplies the softmax gradient by dz'/dz. Used only when
        ``transforms_negatives``; costs one extra pass and one extra (c, B) tile per tile."""
        raise NotImplementedError

    def regularizer(self, x: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to the loss, from the global batch x (B, D): the mean over the B samples.
        The head passes x with gradient only through this rank's own rows, so the sum of the
        ranks' embedding gradients (the all-gather's backward) is the exact gradient, and every
        rank returns the same loss. No collective. None (the default): no regulariser."""
        return None

    def scale_features(self, x: torch.Tensor) -> torch.Tensor:
        """x' from the raw embeddings x (B, D); differentiable, never in place."""
        return x

    def learned_scale(self) -> torch.Tensor | None:
        """The logit scale s as a differentiable 0-dim tensor when it is a parameter, else None
        (the default). Every logit, target and negative, must then be s times a function of the
        cosines alone, and the other hooks must use s as a constant (detached): the head computes
        dL/ds itself from row statistics (``sharded_ce``), exact across ranks."""
        return None

    def target_logit(
        self, cos: torch.Tensor, *, x_norm: torch.Tensor, w_norm: torch.Tensor, step: int
    ) -> torch.Tensor:
        """(k,) target logits from cos theta_y, |x| and |w_y| of k samples at training step ``step``.
        A margin whose ``prepare`` returns a state also receives it as ``state=``. The k samples
        are this rank's owned targets, not the global batch, so only its batch-level (scalar)
        entries apply here; per-sample quantities come in through cos and x_norm."""
        raise NotImplementedError


def overrides(margin: Margin, hook: str) -> bool:
    """Whether ``margin``'s class replaces the base ``Margin`` hook (the head skips the rest)."""
    return getattr(type(margin), hook) is not getattr(Margin, hook)


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

    def target_logit(self, cos, *, x_norm, w_norm, step, state=None):
        return self.scale * self.modify(cos)

    def modify(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def check_margin_rad(name: str, value: float, *, upper: float = math.pi) -> float:
    if not 0.0 <= value < upper:
        raise ValueError(f"{name} must be in [0, {upper:.4f}) radians, got {value}")
    return float(value)
