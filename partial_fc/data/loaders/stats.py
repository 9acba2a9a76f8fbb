"""Counters the training loader keeps for the trainer to log (console, metrics.jsonl, summary.json)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from partial_fc.data.loaders.shard_check import ShardCheck, warn_data

# Order of the counts each worker sends along with a batch (a small int64 tensor).
COUNTS = ("corrupt_samples", "read_errors", "resized")


@dataclass
class LoaderStats:
    """Totals since the loader was built.

    Read by this rank (each rank counts what it read):
      ``batches``, ``samples``: yielded (the batches skipped when resuming mid-epoch included);
      ``corrupt_samples``: skipped because the image did not decode (libjpeg warnings included)
      or the label did not parse; ``read_errors``: tar/file errors while reading (each ends that
      shard's read early); ``resized``: images not at image_size, resized.
    Found in the data set (the same on every rank when found before reading):
      ``shards_missing``: listed in the manifest but absent, left out; ``shards_damaged``:
      present but not as the manifest records them (size, or fewer samples than listed when
      read); ``samples_lost``: listed in the manifest but not readable (missing and damaged
      shards together); ``problems``: shard path -> what is wrong with it (not in ``as_dict``).
    """

    batches: int = 0
    samples: int = 0
    corrupt_samples: int = 0
    read_errors: int = 0
    resized: int = 0
    shards_missing: int = 0
    shards_damaged: int = 0
    samples_lost: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_check(cls, check: ShardCheck) -> LoaderStats:
        return cls(shards_missing=check.shards_missing, shards_damaged=check.shards_damaged,
                   samples_lost=check.samples_lost, problems=dict(check.problems))

    def add_counts(self, counts: list[int]) -> None:
        for name, value in zip(COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + int(value))

    def shard_ended_short(self, path: str, *, read: int, expected: int, error: str, rank: int,
                          warn: bool = True) -> None:
        """A shard yielded ``read`` of the manifest's ``expected`` samples (a worker's report, or
        the tar index); counted and named (a DataWarning) once per shard."""
        if path in self.problems:
            return  # known before reading, or already reported
        lost = max(0, expected - read)
        cause = f" ({error})" if error else ""
        self.problems[path] = f"read {read} of {expected} samples{cause}, {lost} lost"
        self.shards_damaged += 1
        self.samples_lost += lost
        if warn:
            warn_data(f"data: rank {rank}: {path}: {self.problems[path]}")

    def as_dict(self) -> dict[str, int]:
        """Every counter, by name (``problems`` left out: names, not counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "problems"}

    def summed(self, comm: Any, *, device: Any = None) -> dict[str, int]:
        """Collective (every rank calls it): ``as_dict`` with what each rank read summed over the
        ranks; the data set's counts are this rank's (found before reading, they are the same on
        every rank). ``comm``: a ``partial_fc.comm.Collectives``, ``device`` where its tensors
        live (the GPU under NCCL); one all-reduce of len(as_dict()) int64 values, one host sync."""
        import torch

        mine = self.as_dict()
        values = torch.tensor(list(mine.values()), dtype=torch.int64, device=device)
        totals = comm.all_reduce_(values, "sum").tolist()
        found = ("shards_missing", "shards_damaged", "samples_lost")
        return {name: (mine[name] if name in found else int(total)) for name, total in zip(mine, totals)}
