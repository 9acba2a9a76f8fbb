"""Learning-rate schedule: linear warm-up, then polynomial or cosine decay (or constant),
counted in samples.

The curve is a pure function of the samples seen, not of the step, so a run resumed at another
world size (another global batch) continues the same curve: only where it is sampled changes.
An optimizer step that consumes samples [a, a + batch) takes the curve's highest value over them:
the end of the interval during the warm-up (so the first step does not run at rate 0), its start
during the decay, 1 when it straddles the warm-up's end. With a fixed batch G this is exactly the
step schedule (step + 1) / warmup_steps, then decay((step - warmup_steps) / (total - warmup)):
each ratio of whole multiples of G is the same correctly rounded float.

``apply`` writes the rate into every param group of the given optimizers (backbone and head alike).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class WarmupDecay:
    def __init__(self, *, total_samples: int, warmup_samples: int = 0, kind: str = "polynomial",
                 power: float = 2.0, final_ratio: float = 0.0) -> None:
        if total_samples < 1:
            raise ValueError(f"total_samples must be >= 1, got {total_samples}")
        if not 0 <= warmup_samples <= total_samples:
            raise ValueError(f"warmup_samples must be in [0, total_samples={total_samples}], got {warmup_samples}")
        if kind not in ("polynomial", "cosine", "constant"):
            raise ValueError(f"unknown schedule kind {kind!r}; choose from ['constant', 'cosine', 'polynomial']")
        self.total_samples, self.warmup_samples, self.kind = total_samples, warmup_samples, kind
        self.power, self.final_ratio = power, final_ratio

    def curve(self, samples: int) -> float:
        """Multiplier of the base rate once ``samples`` have been seen: 0 -> 1 over the warm-up,
        then the decay to ``final_ratio`` at ``total_samples`` (and after)."""
        if samples < self.warmup_samples:
            return samples / self.warmup_samples
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_samples - self.warmup_samples)
        progress = min(1.0, (samples - self.warmup_samples) / span)
        if self.kind == "polynomial":
            decay = (1.0 - progress) ** self.power
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_ratio + (1.0 - self.final_ratio) * decay

    def factor(self, samples_seen: int, *, batch: int) -> float:
        """Multiplier for the optimizer step that takes samples [samples_seen, samples_seen + batch)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if samples_seen < self.warmup_samples:  # the curve rises to 1 at warmup_samples
            return min(1.0, (samples_seen + batch) / self.warmup_samples)
        return self.curve(samples_seen)  # non-increasing from here

    def apply(self, samples_seen: int, optimizers: Iterable[tuple[torch.optim.Optimizer, float]], *,
              batch: int) -> float:
        """Set lr = base * factor(samples_seen, batch) for each (optimizer, base lr); returns the factor."""
        f = self.factor(samples_seen, batch=batch)
        for optimizer, base in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = base * f
        return f
