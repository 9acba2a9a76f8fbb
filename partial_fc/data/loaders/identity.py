"""Identity-balanced training batches (P identities x K images per rank per step), read at
random from the tar shards through a tar index; the same interface as StreamLoader.

    loader = build_loader(config, sampler="identity", images_per_identity=4, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:           # (P K, 3, S, S) float32 in [-1, 1], (P K,) int64
            ...
    batches = loader.iterate(skip)               # resume mid-epoch; skipped batches are never read

An epoch is ``len(loader)`` = ``config.steps_for(world_size)`` steps, what an epoch is for the
streaming loader (num_samples // (batch_size * world_size) by default), so schedules mean the
same with either. The steps come from consecutive passes of IdentityBalancedSampler: loader step
g = epoch * len(loader) + t is batch g % len(sampler) of sampler pass g // len(sampler).

Batch t is a pure function of (seed, epoch, t, rank, world_size, P, K), whatever num_workers.
Identity c's flips in sampler pass q come from (seed, q, c), so at a fixed global P x world_size
the ranks' batches of a step together hold the same images at any world size.

A sample that does not read or decode is replaced by another image of its identity (chosen by
(seed, pass, identity, slot)) and counted in ``stats``: every rank's batch keeps P x K images. An
identity none of whose images decodes, or ``max_corrupt_in_a_row`` failures in a row, raise.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from partial_fc.data.loaders.identity_sampler import IdentityBalancedSampler
from partial_fc.data.formats.images import CorruptImageError, decode_rgb
from partial_fc.data.loaders.stream import EpochLoader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError, warn_data
from partial_fc.data.loaders.stats import COUNTS
from partial_fc.data.seeding import rng_for
from partial_fc.data.formats.tar_index import SampleIndex, build_index, load_or_build_index
from partial_fc.data.loaders.worker_stream import to_float_chw

_FLIP_TAG, _REPLACE_TAG = 0x1D2, 0x1D3  # beside the sampler's 0x1D0 / 0x1D1
_MAX_OPEN_SHARDS = 128  # per process; far below the usual 1024 descriptors


class _ShardFiles:
    """Shard descriptors opened on first use and kept (least recently used closed past a cap).
    ``os.pread`` reads at an offset without a shared file position, so descriptors a forked
    worker inherits stay safe to use."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths
        self._fds: OrderedDict[int, int] = OrderedDict()

    def read(self, shard: int, offset: int, size: int) -> bytes:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            if len(self._fds) > _MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(shard)
        return os.pread(fd, size, offset)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_fds": OrderedDict()}  # descriptors do not travel to spawned workers

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class _IdentityBatches(Dataset):
    """Map-style over the steps of one epoch: item t -> (images, labels, skip counts)."""

    def __init__(self, loader: IdentityBatchLoader, *, epoch: int) -> None:
        self.index, self.sampler, self.files = loader.index, loader.sampler, loader._files
        self.config, self.epoch, self.steps = loader.config, epoch, loader.steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, t: int) -> tuple:
        """``(images, labels, counts, (), "")``, or ``(None, None, counts, (), message)`` for a
        DataError (raised by the loader in the training process, as one line)."""
        counts = dict.fromkeys(COUNTS, 0)
        try:
            images, labels = self._batch(t, counts)
        except DataError as err:
            return None, None, torch.tensor([counts[n] for n in COUNTS], dtype=torch.int64), (), str(err)
        return images, labels, torch.tensor([counts[n] for n in COUNTS], dtype=torch.int64), (), ""

    def _batch(self, t: int, counts: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, k = self.config, self.sampler.k
        sampler_pass, step = divmod(self.epoch * self.steps + t, len(self.sampler))
        samples = self.sampler.batch(step, epoch=sampler_pass)
        size = cfg.image_size
        images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
        labels = self.index.label[samples]
        for first in range(0, len(samples), k):
            identity = int(labels[first])
            flips = np.zeros(k, bool)
            if cfg.flip:
                flips = rng_for(cfg.seed, _FLIP_TAG, sampler_pass, identity).random(k) < 0.5
            for j in range(k):
                image = self._image_or_replacement(samples[first + j], identity, sampler_pass, j, counts)
                images[first + j] = image[:, ::-1] if flips[j] else image
        return to_float_chw(images), torch.from_numpy(labels)

    def _image_or_replacement(self, i: int, identity: int, sampler_pass: int, slot: int,
                              counts: dict[str, int]) -> np.ndarray:
        image = self._image(i, counts)
        if image is not None:
            return image
        members = self.sampler.identity_members(identity)
        failures, limit = 1, self.config.max_corrupt_in_a_row
        for other in rng_for(self.config.seed, _REPLACE_TAG, sampler_pass, identity, slot).permutation(members):
            if other == i:
                continue
            image = self._image(int(other), counts)
            if image is not None:
                return image
            failures += 1
            if failures > limit:  # as the streaming loader: skipping is for the odd bad sample
                raise DataError(
                    f"{failures} samples in a row failed to read or decode (last: {self.index.describe(int(other))}; "
                    f"data.max_corrupt_in_a_row = {limit}); are these image shards?"
                )
        raise DataError(
            f"identity {identity} has no decodable image: all {len(members)} of its samples failed to read or decode "
            f"(first: {self.index.describe(i)})"
        )

    def _image(self, i: int, counts: dict[str, int]) -> np.ndarray | None:
        """The decoded (S, S, 3) image of sample i, or None (counted) when it fails."""
        index, size = self.index, self.config.image_size
        try:
            data = self.files.read(int(index.shard[i]), int(index.offset[i]), int(index.size[i]))
        except OSError:
            data = b""
        if len(data) != index.size[i]:  # missing or shrunk since it was indexed
            counts["read_errors"] += 1
            return None
        try:
            image = decode_rgb(data)
        except CorruptImageError:
            counts["corrupt_samples"] += 1
            return None
        if image.shape[0] != size or image.shape[1] != size:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
            counts["resized"] += 1
        return image


def index_for(shards: tuple[str, ...]) -> SampleIndex:
    """Cached beside the shards when they share a directory (the data directory); else in memory."""
    # absolute: load_or_build_index reads relative paths from the data directory, not the cwd
    absolute = [str(Path(s).absolute()) for s in shards]
    parents = {Path(s).parent for s in absolute}
    return load_or_build_index(parents.pop(), absolute) if len(parents) == 1 else build_index(absolute)


def _check_labels(index: SampleIndex, num_classes: int | None) -> None:
    high = np.iinfo(np.int64).max if num_classes is None else num_classes
    bad = (index.label < 0) | (index.label >= high)
    if bad.any():
        i = int(np.argmax(bad))
        # Not corruption but a data/config mismatch: silently training on it is worse.
        raise DataError(
            f"label {int(index.label[i])} of sample {index.describe(i)} is outside [0, {num_classes}); "
            "do the shards belong to this manifest?"
        )


class IdentityBatchLoader(EpochLoader):
    """P = config.batch_size // images_per_identity identities x K = images_per_identity images
    per rank per step; see the module docstring. Builds (or loads) the tar index on creation."""

    def __init__(self, config: TrainLoaderConfig, *, images_per_identity: int, rank: int, world_size: int,
                 epoch: int = 0, small_identities: str = "replace") -> None:
        super().__init__(config, rank=rank, world_size=world_size, epoch=epoch)
        k = images_per_identity
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"images_per_identity must be an integer >= 1, got {k!r}")
        if config.batch_size % k:
            raise ValueError(
                f"data.batch_size {config.batch_size} is not a multiple of images_per_identity {k}: a batch is "
                f"P identities x {k} images; set batch_size to a multiple of {k}"
            )
        self.index = index_for(config.shards)
        self._count_short_shards()
        if len(self.index) == 0:
            raise DataError(
                f"no sample could be indexed in {len(config.shards)} shards (skipped: {self.index.skipped}); "
                "are the shard paths right and the files readable tar archives?"
            )
        lost = {reason: n for reason, n in self.index.skipped.items() if n}
        # with a manifest, the shards that lost samples are named against it instead
        if lost and rank == 0 and config.shard_samples is None:  # the same index on every rank
            warn_data(f"tar index: {len(self.index)} samples indexed, skipped {lost}")
        _check_labels(self.index, config.num_classes)
        self.sampler = IdentityBalancedSampler(self.index.label, p=config.batch_size // k, k=k, rank=rank,
                                               world_size=world_size, seed=config.seed,
                                               small_identities=small_identities)
        self._files = _ShardFiles(self.index.shard_paths)

    def _count_short_shards(self) -> None:
        """Shards that index fewer samples than the manifest lists, beyond those found short by
        size (stats): counted and named now, before any batch (the index read every header)."""
        expected = self.config.shard_samples
        if expected is None:
            return
        indexed = np.bincount(self.index.shard, minlength=len(self.config.shards))
        for s, path in enumerate(self.config.shards):
            if indexed[s] < expected[s] and path not in self.stats.problems and s in self.present:
                self.stats.shard_ended_short(path, read=int(indexed[s]), expected=expected[s],
                                             error="in the tar index", rank=self.rank, warn=self.rank == 0)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # random access: the skipped batches are never read
        yield from self._read(_IdentityBatches(self, epoch=self.epoch), sampler=range(start, self.steps))
