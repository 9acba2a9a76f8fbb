"""The part of every conversion that is the same: shuffle globally, make each image a JPEG
(or count it as skipped), write shards, write the manifest last.

Source-specific code (convert_folder.py, convert_rec.py) only lists samples, labels them and
says how to load one sample's bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from partial_fc.data.formats.images import CorruptImageError, as_jpeg, decode_rgb
from partial_fc.data.formats.manifest import ShardManifest, write_manifest
from partial_fc.data.pools import pool_context
from partial_fc.util.progress import Progress
from partial_fc.data.seeding import STREAM_CONVERT, rng_for
from partial_fc.data.formats.shards import ShardWriter

_BLOCK = 1024


@dataclass(frozen=True)
class ConvertConfig:
    out_dir: Path
    shard_size_bytes: int = 1 << 30
    seed: int = 0
    workers: int = 1
    jpeg_quality: int = 95
    verify_decode: bool = False  # decode every JPEG fully (slower) instead of checking its header
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_size_bytes < 1 << 14:
            raise ValueError(f"convert.shard_size_bytes must be >= 16384 (16 KiB), got {self.shard_size_bytes}")
        if self.seed < 0:
            raise ValueError(f"convert.seed must be a non-negative integer, got {self.seed}")
        if self.workers < 1:
            raise ValueError(f"convert.workers must be >= 1, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"convert.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


class LoadError(Exception):
    """Raised by a source's ``load`` for a sample it cannot read; ``reason`` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _prepare(task: tuple[int, bytes, int, bool]) -> tuple[int, bytes | str]:
    """(index, JPEG bytes) or (index, reason it was skipped)."""
    index, raw, quality, verify = task
    try:
        jpeg = as_jpeg(raw, quality=quality)
        if verify:
            decode_rgb(jpeg)
    except CorruptImageError:
        return index, "undecodable_image"
    return index, jpeg


def _prepared(tasks: Iterator[tuple[int, bytes, int, bool]], pool: Any) -> Iterator[tuple[int, bytes | str]]:
    """_prepare over ``tasks`` in order. With a pool, blocks of _BLOCK tasks are in flight one
    at a time while the next block is loaded here: memory stays bounded (Pool.imap would read
    the whole source ahead into its queue) and loading overlaps encoding."""
    if pool is None:
        yield from map(_prepare, tasks)
        return
    pending = None
    while True:
        block = list(islice(tasks, _BLOCK))
        submitted = pool.map_async(_prepare, block, chunksize=32) if block else None
        if pending is not None:
            yield from pending.get()
        if submitted is None:
            return
        pending = submitted


def write_shuffled(
    config: ConvertConfig,
    *,
    labels: Sequence[int],
    load: Callable[[int], bytes],
    label_map: dict[str, int],
    source: dict[str, Any],
    skipped: Counter[str],
) -> ShardManifest:
    """Write samples 0..len(labels)-1 in a seeded global random order.

    ``load(i)`` returns sample i's encoded image or raises LoadError. ``labels[i]`` is its dense
    label in [0, len(label_map)). ``skipped`` (updated in place) already holds what the source
    left out while listing; corrupt samples found here are added to it.
    """
    order = rng_for(config.seed, STREAM_CONVERT).permutation(len(labels))
    progress = Progress(len(labels), desc="convert", enabled=config.show_progress)

    def tasks() -> Iterator[tuple[int, bytes, int, bool]]:
        for i in order.tolist():
            try:
                raw = load(i)
            except LoadError as err:
                skipped[err.reason] += 1
                progress.update()
                continue
            yield i, raw, config.jpeg_quality, config.verify_decode

    per_class: Counter[int] = Counter()
    pool = pool_context().Pool(config.workers) if config.workers > 1 else None
    try:
        with ShardWriter(config.out_dir, max_bytes=config.shard_size_bytes) as writer:
            for i, result in _prepared(tasks(), pool):
                progress.update()
                if isinstance(result, str):
                    skipped[result] += 1
                    continue
                writer.write(key=f"{i:09d}", jpeg=result, label=labels[i])
                per_class[labels[i]] += 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    total_skipped = sum(skipped.values())
    progress.close(note=f", {total_skipped} skipped" if total_skipped else "")

    empty = len(label_map) - len(per_class)
    manifest = ShardManifest(
        num_classes=len(label_map),
        num_samples=sum(s.num_samples for s in writer.shards),
        shards=tuple(writer.shards),
        label_map=label_map,
        source=source,
        skipped=dict(sorted(skipped.items())),
        extra={"classes_without_samples": empty, "seed": config.seed},
    )
    write_manifest(config.out_dir, manifest)
    return manifest
