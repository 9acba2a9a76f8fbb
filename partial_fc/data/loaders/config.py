"""TrainLoaderConfig: what the training loader reads and how, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from partial_fc.data.formats.manifest import load_manifest
from partial_fc.util.signals import DEFAULT_STOP_SIGNALS, check_signal_names

IMAGE_SIZES = (16, 1024)  # pixels per side: below 16 no backbone here has a feature map left
MAX_WORKERS = 64  # DataLoader processes per rank; far beyond what decoding one rank's batches needs


def check_image_size(image_size: int) -> None:
    """The one check of the loader's image side (the training config's model.input_size)."""
    low, high = IMAGE_SIZES
    if not (isinstance(image_size, int) and low <= image_size <= high):
        raise ValueError(f"image_size must be in [{low}, {high}] pixels, got {image_size!r}")


def check_num_workers(num_workers: int) -> None:
    """The one check of the loader's worker count (the training config's data.num_workers)."""
    if not (isinstance(num_workers, int) and 0 <= num_workers <= MAX_WORKERS):
        raise ValueError(f"num_workers must be in [0, {MAX_WORKERS}] (DataLoader processes per rank; 0 reads in the "
                         f"training process), got {num_workers!r}")


@dataclass(frozen=True)
class TrainLoaderConfig:
    """``batch_size`` is per rank. ``steps_per_epoch`` batches come out of every rank each
    epoch; when None it is num_samples // (batch_size * world_size) (at least 1).
    ``shard_samples`` / ``shard_bytes``: what the manifest records for each shard (from_manifest
    sets them), so that missing, truncated or emptied shards are found and named before reading."""

    shards: tuple[str, ...]
    batch_size: int
    num_classes: int | None = None
    num_samples: int | None = None
    steps_per_epoch: int | None = None
    image_size: int = 112
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 2000
    flip: bool = True
    pin_memory: bool | None = None  # None: pin when CUDA is available
    prefetch_factor: int = 2
    # DataLoader worker start method; None keeps the process default (fork on Linux under
    # torchrun). Ranks started with spawn inherit spawn, which re-imports torch in every worker
    # every epoch: "fork" avoids that (workers never touch CUDA).
    worker_start_method: str | None = None
    # Skipping is for the odd bad sample; this many failures in a row (not a decodable image
    # among them) means the data is not what it should be, and the worker raises.
    max_corrupt_in_a_row: int = 1000
    # Signals the workers ignore: the trainer's preemption signals, which the main process
    # turns into a checkpoint at a step boundary (SLURM sends them to every process of a step).
    ignore_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS
    shard_samples: tuple[int, ...] | None = None
    shard_bytes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check_signal_names(self.ignore_signals)
        need(len(self.shards) > 0, "data.shards is empty: give at least one .tar shard (or use from_manifest)")
        need(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        need(self.num_classes is None or self.num_classes >= 1, f"data.num_classes must be >= 1, got {self.num_classes}")
        need(self.num_samples is None or self.num_samples >= 1, f"data.num_samples must be >= 1, got {self.num_samples}")
        need(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            f"data.steps_per_epoch must be >= 1, got {self.steps_per_epoch}",
        )
        need(
            self.steps_per_epoch is not None or self.num_samples is not None,
            "data.steps_per_epoch is None and so is data.num_samples; set one (from_manifest sets num_samples)",
        )
        for check, value in ((check_image_size, self.image_size), (check_num_workers, self.num_workers)):
            try:
                check(value)
            except ValueError as err:
                raise ValueError(f"data.{err}") from None
        need(self.seed >= 0, f"data.seed must be a non-negative integer, got {self.seed}")
        need(self.shuffle_buffer >= 1, f"data.shuffle_buffer must be >= 1 (1 = no shuffling), got {self.shuffle_buffer}")
        need(self.prefetch_factor >= 1, f"data.prefetch_factor must be >= 1, got {self.prefetch_factor}")
        need(self.max_corrupt_in_a_row >= 1, f"data.max_corrupt_in_a_row must be >= 1, got {self.max_corrupt_in_a_row}")
        for name in ("shard_samples", "shard_bytes"):
            value = getattr(self, name)
            need(value is None or len(value) == len(self.shards),
                 f"{name} has {len(value or ())} entries for {len(self.shards)} shards; give one per shard or None")
        methods = (None, "fork", "spawn", "forkserver")
        need(
            self.worker_start_method in methods,
            f"data.worker_start_method must be one of {methods}, got {self.worker_start_method!r}",
        )

    @classmethod
    def from_manifest(cls, data_dir: str | Path, **overrides: Any) -> TrainLoaderConfig:
        """Shards, class and sample counts from ``DIR/manifest.json``; everything else from
        ``overrides`` (batch_size is required)."""
        manifest = load_manifest(data_dir)
        root = Path(data_dir) if Path(data_dir).is_dir() else Path(data_dir).parent
        base = {
            "shards": tuple(manifest.shard_paths(root)),
            "num_classes": manifest.num_classes,
            "num_samples": manifest.num_samples,
            "shard_samples": tuple(s.num_samples for s in manifest.shards),
            "shard_bytes": tuple(s.num_bytes for s in manifest.shards),
        }
        return cls(**{**base, **overrides})

    def steps_for(self, world_size: int) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        assert self.num_samples is not None
        return max(1, self.num_samples // (self.batch_size * world_size))

    def with_(self, **changes: Any) -> TrainLoaderConfig:
        return replace(self, **changes)
