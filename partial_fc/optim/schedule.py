"""Learning-rate schedule: linear warm-up, then polynomial or cosine decay (or constant).

The schedule is a pure function of the step, so resuming needs only the step; ``apply`` writes
the rate into every param group of the given optimizers (backbone and head alike).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class WarmupDecay:
    def __init__(self, *, total_steps: int, warmup_steps: int = 0, kind: str = "polynomial",
                 power: float = 2.0, final_ratio: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        if kind not in ("polynomial", "cosine", "constant"):
            raise ValueError(f"unknown schedule kind {kind!r}; choose from ['constant', 'cosine', 'polynomial']")
        self.total_steps, self.warmup_steps, self.kind = total_steps, warmup_steps, kind
        self.power, self.final_ratio = power, final_ratio

    def factor(self, step: int) -> float:
        """Multiplier of the base rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "polynomial":
            decay = (1.0 - progress) ** self.power
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_ratio + (1.0 - self.final_ratio) * decay

    def apply(self, step: int, optimizers: Iterable[tuple[torch.optim.Optimizer, float]]) -> float:
        """Set lr = base * factor(step) for each (optimizer, base lr); returns the factor."""
        f = self.factor(step)
        for optimizer, base in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = base * f
        return f
