"""The training loader: endless resampled shards, split by rank and worker, equal length.

    config = TrainLoaderConfig.from_manifest("data/synth", batch_size=128, num_workers=4)
    loader = build_stream_loader(config, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:      # (B, 3, S, S) float32 in [-1, 1], (B,) int64
            ...
        log(loader.stats.as_dict())        # corrupt samples skipped, read errors, shards lost, ...
    batches = loader.iterate(skip)         # resume mid-epoch: batches skip, skip + 1, ...

Nothing bad vanishes: shards missing or damaged against the manifest are named when the loader
is built (shard_check.py), a shard that ends before its manifest count while read is named when
found, a sample that does not decode is skipped and counted; all of it is in ``stats``. What
training cannot go on with (a label outside the class range, nothing readable) is a DataError,
one line raised in the training process even when a worker found it.

Every rank yields exactly ``len(loader)`` batches per epoch whatever the shard count or sizes,
so collectives in the training step never wait on a rank whose data ran out. The data a
(rank, worker) sees is a function of (seed, rank, worker, epoch) only. Rank and world size are
arguments; nothing here looks up the process group.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from functools import partial

import torch
from torch.utils.data import DataLoader

from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError, check_shards, report_shards
from partial_fc.data.loaders.stats import LoaderStats
from partial_fc.data.loaders.worker_stream import ShardStream
from partial_fc.util.signals import die_with_parent, ignore_signals


def _worker_init(worker_id: int, *, ignore: tuple[str, ...], parent: int) -> None:
    # the main process decides what a preemption signal means (a checkpoint, then exit); a
    # worker ignoring SIGTERM must then surely end with its parent
    die_with_parent(parent)
    ignore_signals(ignore)
    # Decoding is one image at a time per worker; torch's intra-op threads would only fight
    # the other workers for the same cores.
    torch.set_num_threads(1)


class EpochLoader:
    """What every training loader shares: ``len`` (steps per epoch on every rank), ``set_epoch``,
    iteration from a step (``iterate``), ``stats``, and the DataLoader settings of the workers.
    A subclass implements ``_batches(start)`` as a generator, usually through ``_read``."""

    def __init__(self, config: TrainLoaderConfig, *, rank: int, world_size: int, epoch: int = 0) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.config, self.rank, self.world_size, self.epoch = config, rank, world_size, epoch
        self.steps = config.steps_for(world_size)
        check = check_shards(config.shards, samples=config.shard_samples, sizes=config.shard_bytes)
        report_shards(check, config.shards, rank=rank)
        self.present = check.present  # indices into config.shards of the shards that exist
        self.stats = LoaderStats.from_check(check)
        self.pin_memory = torch.cuda.is_available() if config.pin_memory is None else config.pin_memory

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (otherwise each full pass advances it)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start + 1, ...`` of the current epoch (to resume mid-epoch)."""
        if not 0 <= start <= self.steps:
            raise ValueError(f"start must be in [0, {self.steps}] (the epoch's steps), got {start}")
        return self._batches(start)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _read(self, dataset: torch.utils.data.Dataset, *, drop: int = 0,
              sampler: range | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Whole batches of ``dataset`` through the workers; the first ``drop`` are read and counted
        but not yielded. Advances the epoch. Items are ``(images, labels, counts, short shards,
        error)``: counts as in stats.COUNTS, short shards as ``(path, read, expected, error)``, and
        an error message (images None) for a DataError found in a worker, raised here."""
        cfg, workers = self.config, self.config.num_workers
        loader = DataLoader(
            dataset,
            batch_size=None,  # batches are built in the workers
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory,
            worker_init_fn=partial(_worker_init, ignore=cfg.ignore_signals, parent=os.getpid()) if workers > 0 else None,
            prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
            persistent_workers=False,  # workers must see the new epoch
            multiprocessing_context=cfg.worker_start_method if workers > 0 else None,
        )
        position = 0
        for images, labels, counts, short, error in loader:
            self.stats.add_counts(counts.tolist())
            for path, read, expected, cause in short:
                self.stats.shard_ended_short(path, read=read, expected=expected, error=cause, rank=self.rank)
            if error:
                raise DataError(error)
            self.stats.batches += 1
            self.stats.samples += len(labels)
            if position >= drop:
                yield images, labels
            position += 1
        self.epoch += 1


class StreamLoader(EpochLoader):
    def __init__(self, config: TrainLoaderConfig, *, rank: int, world_size: int, epoch: int = 0) -> None:
        super().__init__(config, rank=rank, world_size=world_size, epoch=epoch)
        streams = world_size * max(config.num_workers, 1)
        if len(self.present) < streams:
            warnings.warn(
                f"{len(self.present)} shards for {streams} reading streams ({world_size} ranks x "
                f"{max(config.num_workers, 1)} workers): streams will read the same shards at the same "
                "time and batches will repeat samples more than a shuffled pass would; write smaller shards",
                stacklevel=2,
            )

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The stream is sequential: the skipped batches are still read and decoded, then dropped
        # (``stats`` counts them too, they were read).
        dataset = ShardStream(self.config, rank=self.rank, world_size=self.world_size, epoch=self.epoch,
                              steps=self.steps, present=tuple(self.present))
        yield from self._read(dataset, drop=start)


def build_stream_loader(config: TrainLoaderConfig, *, rank: int, world_size: int, epoch: int = 0) -> StreamLoader:
    """The training loader of one rank; see the module docstring."""
    return StreamLoader(config, rank=rank, world_size=world_size, epoch=epoch)
