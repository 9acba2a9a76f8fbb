"""Counters the training loader keeps for the trainer to log."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Order of the counts each worker sends along with a batch (a small int64 tensor).
COUNTS = ("corrupt_samples", "read_errors", "resized")


@dataclass
class LoaderStats:
    """Totals since the loader was built. ``corrupt_samples``: samples skipped because their
    image did not decode or their label did not parse; ``read_errors``: tar/file errors (each
    may lose the rest of a shard); ``resized``: images not at image_size, resized."""

    batches: int = 0
    samples: int = 0
    corrupt_samples: int = 0
    read_errors: int = 0
    resized: int = 0

    def add_batch(self, batch_size: int, counts: list[int]) -> None:
        self.batches += 1
        self.samples += batch_size
        for name, value in zip(COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + int(value))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
