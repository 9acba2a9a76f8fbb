"""What one DataLoader worker runs: shards -> samples -> shuffled -> decoded, flipped,
normalised batches.

Each worker yields a fixed number of whole batches, built in the worker, as
``(images (B, 3, S, S) float32 in [-1, 1], labels (B,) int64, counts (len(COUNTS),) int64,
short shards, error)`` where ``counts`` are the samples skipped (see stats.COUNTS) since its
previous batch and ``short shards`` the ``(path, read, expected, error)`` of each shard that
ended before its manifest count meanwhile. A sample that does not decode is skipped and
counted, never raised: one bad JPEG in a billion must not end a run. What the run cannot go on
with ends the worker's stream with one last item, ``(None, None, counts, short, message)``:
the training process raises it as one line (a worker's exception would arrive as a traceback).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from partial_fc.data.formats.images import CorruptImageError, decode_rgb
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError
from partial_fc.data.loaders.stats import COUNTS
from partial_fc.data.seeding import STREAM_WORKER, derive_seed
from partial_fc.data.loaders.shard_source import stream_shards


@dataclass
class _Counts:
    corrupt_samples: int = 0
    read_errors: int = 0
    resized: int = 0
    short: list[tuple[str, int, int, str]] = field(default_factory=list)

    def take(self) -> tuple[torch.Tensor, tuple[tuple[str, int, int, str], ...]]:
        out = torch.tensor([getattr(self, name) for name in COUNTS], dtype=torch.int64)
        self.corrupt_samples = self.read_errors = self.resized = 0
        short, self.short = tuple(self.short), []
        return out, short


def read_shard(url: str, *, expected: int | None, counts: _Counts) -> Iterator[dict[str, Any]]:
    """The samples of one shard. A tar error ends the shard (counted in ``read_errors``); a shard
    that yields fewer samples than ``expected`` (the manifest's count) is reported in
    ``counts.short``, whatever the cause: a truncation at a member boundary raises nothing."""
    errors: list[str] = []

    def on_error(exc: Exception) -> bool:  # webdataset handler: count, go on with the next shard
        counts.read_errors += 1
        errors.append(f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}")
        return True

    read = 0
    for sample in wds.tarfile_to_samples(handler=on_error)(iter([{"url": url}])):
        read += 1
        yield sample
    if expected is not None and read < expected:
        counts.short.append((url, read, expected, errors[0] if errors else ""))


def batches_for_worker(steps: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` yields so that all workers together yield ``steps``."""
    return steps // num_workers + (1 if worker < steps % num_workers else 0)


def to_float_chw(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    # Transposing the uint8 bytes first and converting contiguously is ~2x faster than a
    # strided uint8 -> float copy (measured on one core, 128x112x112 batches).
    out = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
    out *= np.float32(1.0 / 127.5)
    out -= np.float32(1.0)
    return torch.from_numpy(out)


class _Watchdog:
    """Fails loudly instead of spinning forever when no shard yields any sample (all missing,
    empty or unreadable): an endless stream over nothing would hang every rank."""

    def __init__(self, num_shards: int) -> None:
        self.limit = max(2 * num_shards, 8)
        self.shards_since_sample = 0

    def shard_started(self, url: str) -> None:
        self.shards_since_sample += 1
        if self.shards_since_sample > self.limit:
            raise DataError(
                f"{self.shards_since_sample} shards in a row gave no sample (last: {url}); "
                "are the shard paths right and the files readable tar archives?"
            )

    def watch(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            self.shards_since_sample = 0
            yield sample


def decode_batches(
    samples: Iterator[dict[str, Any]],
    *,
    batch_size: int,
    image_size: int,
    flip: bool,
    rng: np.random.Generator,
    counts: _Counts,
    num_classes: int | None,
    max_corrupt_in_a_row: int = 1000,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Whole batches (images, labels, skip counts since the previous batch) from samples with
    ``jpg`` and ``cls`` members; the flip is drawn from ``rng`` once per kept sample."""
    buffer = np.empty((batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(batch_size, dtype=np.int64)
    n = failures_in_a_row = 0
    for sample in samples:
        data, cls = sample.get("jpg"), sample.get("cls")
        try:
            if data is None or cls is None:
                raise ValueError("sample lacks a jpg or a cls member")
            label = int(cls)
            image = decode_rgb(data)
        except (ValueError, CorruptImageError):  # int(b"x") and a bad image both land here
            counts.corrupt_samples += 1
            failures_in_a_row += 1
            if failures_in_a_row > max_corrupt_in_a_row:
                # Skipping is for the odd bad sample; an endless run of them would be a hang.
                raise DataError(
                    f"{failures_in_a_row} samples in a row failed to decode or had no label "
                    f"(last: {sample.get('__key__')!r} in {sample.get('__url__')}); are these image shards?"
                ) from None
            continue
        failures_in_a_row = 0
        if num_classes is not None and not 0 <= label < num_classes:
            # Not corruption but a data/config mismatch: silently training on it is worse.
            raise DataError(
                f"label {label} of sample {sample.get('__key__')!r} in {sample.get('__url__')} is outside "
                f"[0, {num_classes}); do the shards belong to this manifest?"
            )
        if image.shape[0] != image_size or image.shape[1] != image_size:
            image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
            counts.resized += 1
        if flip and rng.random() < 0.5:
            image = image[:, ::-1]
        buffer[n] = image
        labels[n] = label
        n += 1
        if n == batch_size:
            yield to_float_chw(buffer), torch.from_numpy(labels.copy()), *counts.take(), ""
            n = 0


class ShardStream(torch.utils.data.IterableDataset):
    """The dataset handed to DataLoader (batch_size=None: batches are built here)."""

    def __init__(self, config: TrainLoaderConfig, *, rank: int, world_size: int, epoch: int, steps: int,
                 present: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.config, self.rank, self.world_size, self.epoch, self.steps = config, rank, world_size, epoch, steps
        # the shards to read (indices into config.shards): those found on disk
        self.present = tuple(range(len(config.shards))) if present is None else present

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cfg = self.config
        seed = derive_seed(cfg.seed, STREAM_WORKER, self.rank, worker, self.epoch)  # shuffle buffer
        flip_seed = derive_seed(cfg.seed, STREAM_WORKER, self.rank, worker, self.epoch, 1)
        counts = _Counts()
        watchdog = _Watchdog(len(self.present))
        order = stream_shards(
            len(self.present),
            seed=cfg.seed,
            epoch=self.epoch,
            stream=self.rank * num_workers + worker,
            num_streams=self.world_size * num_workers,
        )

        def shards() -> Iterator[dict[str, Any]]:
            for index in (self.present[k] for k in order):
                watchdog.shard_started(cfg.shards[index])
                expected = None if cfg.shard_samples is None else cfg.shard_samples[index]
                yield from read_shard(cfg.shards[index], expected=expected, counts=counts)

        samples = wds.DataPipeline(
            shards,
            watchdog.watch,
            wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(seed)),
        )
        batches = decode_batches(
            iter(samples),
            batch_size=cfg.batch_size,
            image_size=cfg.image_size,
            flip=cfg.flip,
            rng=np.random.default_rng(flip_seed),
            counts=counts,
            num_classes=cfg.num_classes,
            max_corrupt_in_a_row=cfg.max_corrupt_in_a_row,
        )
        try:
            yield from islice(batches, batches_for_worker(self.steps, worker, num_workers))
        except DataError as err:
            yield None, None, *counts.take(), str(err)
