"""SynthConfig: what `partial-fc data synth` generates, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SynthConfig:
    """Training identities are ids 0..identities-1; held-out identities (for verification
    pairs only, never in the shards) are ids identities..identities+heldout_identities-1."""

    out_dir: Path
    identities: int = 1000
    images_per_identity: int = 20
    size: int = 112
    seed: int = 0
    heldout_identities: int = 200
    pairs: int = 2000
    workers: int = 1
    shard_samples: int = 2000
    shard_size_bytes: int = 1 << 30
    render_batch: int = 64  # images drawn per vectorised call; the output does not depend on it

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.identities >= 1, f"synth.identities must be >= 1, got {self.identities}")
        need(self.images_per_identity >= 1, f"synth.images_per_identity must be >= 1, got {self.images_per_identity}")
        need(32 <= self.size <= 512, f"synth.size must be in [32, 512] pixels, got {self.size}")
        need(self.seed >= 0, f"synth.seed must be a non-negative integer, got {self.seed}")
        need(self.heldout_identities >= 0, f"synth.heldout_identities must be >= 0, got {self.heldout_identities}")
        need(
            self.pairs >= 0 and self.pairs % 2 == 0,
            f"synth.pairs must be a non-negative even number (half same, half different), got {self.pairs}",
        )
        need(
            self.pairs == 0 or self.heldout_identities >= 2,
            f"synth.pairs={self.pairs} needs heldout_identities >= 2 (different-identity pairs), got {self.heldout_identities}",
        )
        need(self.workers >= 1, f"synth.workers must be >= 1, got {self.workers}")
        need(self.shard_samples >= 1, f"synth.shard_samples must be >= 1, got {self.shard_samples}")
        need(self.shard_size_bytes >= 1 << 16, f"synth.shard_size_bytes must be >= 65536, got {self.shard_size_bytes}")
        need(self.render_batch >= 1, f"synth.render_batch must be >= 1, got {self.render_batch}")

    @property
    def num_train_images(self) -> int:
        return self.identities * self.images_per_identity
