"""`partial-fc bench data`: JPEG decode + augment throughput of the training loader.

    partial-fc bench data                       # on a temporary synthetic set, 112x112
    partial-fc bench data --data data/ms1mv3 --workers 8

Four figures, each the median over ``--repeats``:
  decode only   simplejpeg on in-memory JPEG bytes, one core: the floor of what a worker costs
  per worker    the full worker pipeline (tar read, shuffle buffer, decode, flip, batch,
                normalise) in this process, one core
  total         the real DataLoader with --workers processes, images/s reaching the trainer
                (from the second batch on, so worker start-up is not counted)
  identity      the same for identity-balanced batches (P identities x K images, random access
                through the tar index), and the rate at which the index is built from scratch
"""

from __future__ import annotations

import argparse
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from partial_fc.data.loaders.config import TrainLoaderConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="shard directory with a manifest (default: a temporary synthetic set)")  # fmt: skip
    parser.add_argument("--size", type=int, default=112, help="image side of the temporary synthetic set (default 112)")
    parser.add_argument("--images", type=int, default=4000, help="images in the temporary synthetic set (default 4000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=24, help="batches per timed repeat (default 24)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers for the total (default: all cores)")  # fmt: skip
    parser.add_argument("--images-per-identity", type=int, default=4, help="K of the identity-balanced batches (default 4)")


def _decode_only(config: TrainLoaderConfig, repeats: int) -> float:
    import simplejpeg

    with tarfile.open(config.shards[0]) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:2000]  # type: ignore[union-attr]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in jpegs:
            simplejpeg.decode_jpeg(data, colorspace="RGB")
        rates.append(len(jpegs) / (time.perf_counter() - start))
    return statistics.median(rates)


def _per_worker(config: TrainLoaderConfig, batches: int, repeats: int) -> tuple[float, float]:
    """(wall images/s, images per CPU-second) of the worker pipeline run in this process."""
    from partial_fc.data.loaders.worker_stream import ShardStream

    wall, cpu = [], []
    for r in range(repeats):
        stream = iter(ShardStream(config, rank=0, world_size=1, epoch=r, steps=batches + 1))
        next(stream)  # fills the shuffle buffer; not timed
        t, c, n = time.perf_counter(), time.process_time(), 0
        for images, *_ in stream:  # (images, labels, counts, short shards, error)
            n += len(images)
        wall.append(n / (time.perf_counter() - t))
        cpu.append(n / (time.process_time() - c))
    return statistics.median(wall), statistics.median(cpu)


def _total(config: TrainLoaderConfig, batches: int, repeats: int, *, sampler: str = "stream", k: int = 4) -> float:
    """Images/s reaching the trainer through the real DataLoader (``sampler`` as data.sampler)."""
    from partial_fc.data.loaders.build import build_loader

    rates = []
    for r in range(repeats):
        it = iter(build_loader(config.with_(steps_per_epoch=batches + 1), sampler=sampler, images_per_identity=k,
                               rank=0, world_size=1, epoch=r))
        next(it)  # worker start-up and the first shuffle-buffer fill are not throughput
        t, n = time.perf_counter(), 0
        for images, _ in it:
            n += len(images)
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def _index_rate(config: TrainLoaderConfig) -> float:
    """Samples/s of a cold build of the tar index (one process, no cache)."""
    from partial_fc.data.formats.tar_index import build_index

    start = time.perf_counter()
    index = build_index(config.shards)
    return len(index) / (time.perf_counter() - start)


def _synthetic(out: Path, *, images: int, size: int, workers: int) -> None:
    from partial_fc.data.synth.config import SynthConfig
    from partial_fc.data.synth.generate import generate

    identities = max(2, images // 20)
    config = SynthConfig(out_dir=out, identities=identities, images_per_identity=20, size=size, pairs=0,
                         heldout_identities=0, workers=workers, shard_samples=max(1, identities * 20 // 8))  # fmt: skip
    generate(config, show_progress=False)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="pfc-bench-data-") as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp)
            _synthetic(data_dir, images=args.images, size=args.size, workers=min(args.workers, cores))
        config = TrainLoaderConfig.from_manifest(
            data_dir, batch_size=args.batch_size, num_workers=args.workers, shuffle_buffer=1000, steps_per_epoch=1
        )
        decode = _decode_only(config, args.repeats)
        worker_wall, worker_cpu = _per_worker(config, args.batches, args.repeats)
        total = _total(config, args.batches, args.repeats)
        identity = _total(config, args.batches, args.repeats, sampler="identity", k=args.images_per_identity)
        index_rate = _index_rate(config)
    used = min(args.workers, cores)
    source = args.data if args.data else f"temporary synthetic set, {args.size}x{args.size} JPEG"
    print(f"data: {source}, batch {args.batch_size}, median of {args.repeats} repeats, {cores} cores")
    print(f"decode only (simplejpeg, 1 core):      {decode:10,.0f} img/s")
    print(f"per worker (decode+augment, 1 core):   {worker_wall:10,.0f} img/s wall, "
          f"{worker_cpu:,.0f} img/s per CPU-second")  # fmt: skip
    print(f"total ({args.workers} DataLoader workers):      {total:10,.0f} img/s  ({total / used:,.0f} per core used)")
    print(f"identity P x K, K={args.images_per_identity} ({args.workers} workers):  {identity:10,.0f} img/s  "
          f"({identity / total:.2f}x the streamed total); tar index built at {index_rate:,.0f} samples/s")
    return 0
