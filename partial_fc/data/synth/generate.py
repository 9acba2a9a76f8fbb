"""`partial-fc data synth`: training shards, held-out verification pairs and a manifest.

    DIR/train-000000.tar ...      webdataset shards, keys `jpg` and `cls` (label = identity id)
    DIR/heldout.pairs.npz         verification pairs of held-out identities (pairs.py format)
    DIR/manifest.json             counts, shards, generator settings, raw-pixel baseline

Training samples are written in one global random order, so every shard mixes identities the
way a shuffled real data set does. Images are rendered in chunks by a pool of worker processes
and written in order by this one; the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from partial_fc.data.baseline import pixel_baseline
from partial_fc.data.formats.manifest import ShardManifest, write_manifest
from partial_fc.data.formats.pairs import PAIRS_SUFFIX, PairSet, save_pairs
from partial_fc.data.pools import pool_context
from partial_fc.util.progress import Progress
from partial_fc.data.seeding import STREAM_NOISE, STREAM_ORDER, STREAM_PAIRS, rng_for
from partial_fc.data.formats.shards import ShardWriter
from partial_fc.data.synth.config import SynthConfig
from partial_fc.data.synth.params import identity_uniforms, image_uniforms
from partial_fc.data.synth.render import CHANNELS, render_faces

GENERATOR_VERSION = 1  # bump when a change alters the images a (seed, identity, image) gives
PAIRS_NAME = "heldout"
_CHUNK = 512  # samples per worker task: big enough to amortise IPC, small enough to stream
_PIXELS_PER_CALL = 64 * 112 * 112

_worker_bank: np.ndarray | None = None


def noise_bank(seed: int, size: int) -> np.ndarray:
    """The shared float32 standard-normal bank that images read their noise from."""
    return rng_for(seed, STREAM_NOISE).standard_normal(max(1 << 18, 4 * size * size * CHANNELS), dtype=np.float32)


def render_jpegs(
    seed: int, identity_ids: np.ndarray, image_ids: np.ndarray, *, size: int, batch: int, bank: np.ndarray
) -> list[bytes]:
    """JPEG bytes of images (identity_ids[k], image_ids[k]), in that order."""
    # Bound the pixels per vectorised call, so large sizes do not need gigabytes of temporaries.
    batch = max(1, min(batch, _PIXELS_PER_CALL // (size * size)))
    out: list[bytes] = []
    for start in range(0, len(identity_ids), batch):
        ids, imgs = identity_ids[start : start + batch], image_ids[start : start + batch]
        pixels, quality = render_faces(identity_uniforms(seed, ids), image_uniforms(seed, ids, imgs), size=size, noise_bank=bank)
        for k in range(len(ids)):
            out.append(
                simplejpeg.encode_jpeg(pixels[k], quality=int(quality[k]), colorspace="RGBX", colorsubsampling="420")
            )
    return out


def _init_worker(seed: int, size: int) -> None:
    global _worker_bank
    _worker_bank = noise_bank(seed, size)


def _render_task(task: tuple[int, int, int, np.ndarray, np.ndarray]) -> list[bytes]:
    seed, size, batch, ids, imgs = task
    assert _worker_bank is not None, "worker not initialised"
    return render_jpegs(seed, ids, imgs, size=size, batch=batch, bank=_worker_bank)


def _rendered(config: SynthConfig, ids: np.ndarray, imgs: np.ndarray, pool: Any) -> Iterator[list[bytes]]:
    """Chunks of JPEG bytes in input order, from the pool or (workers == 1) inline."""
    tasks = (
        (config.seed, config.size, config.render_batch, ids[s : s + _CHUNK], imgs[s : s + _CHUNK])
        for s in range(0, len(ids), _CHUNK)
    )
    if pool is None:
        bank = noise_bank(config.seed, config.size)
        for _, _, _, i, j in tasks:
            yield render_jpegs(config.seed, i, j, size=config.size, batch=config.render_batch, bank=bank)
    else:
        yield from pool.imap(_render_task, tasks)


def heldout_pairs(config: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identity ids (2P,), image ids (2P,), issame (P,)): P/2 same-identity pairs and P/2
    different-identity pairs of held-out identities, in a seeded random order. Pair p uses image
    indices 2p and 2p+1, so no image appears twice."""
    rng = rng_for(config.seed, STREAM_PAIRS)
    p = config.pairs
    issame = rng.permutation(np.arange(p) < p // 2)
    first = rng.integers(0, config.heldout_identities, size=p)
    # A different identity: shift by 1..M-1 (mod M), uniform over the others.
    other = (first + rng.integers(1, config.heldout_identities, size=p)) % config.heldout_identities
    second = np.where(issame, first, other)
    ids = config.identities + np.stack([first, second], axis=1).reshape(-1)
    imgs = np.arange(2 * p, dtype=np.int64)
    return ids.astype(np.int64), imgs, issame


@dataclass(frozen=True)
class SynthResult:
    manifest_path: Path
    pairs_path: Path | None
    train_images: int
    train_seconds: float
    baseline_accuracy: float | None
    baseline_std: float | None

    @property
    def images_per_second(self) -> float:
        return self.train_images / max(self.train_seconds, 1e-9)


def generate(config: SynthConfig, *, show_progress: bool = True) -> SynthResult:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = rng_for(config.seed, STREAM_ORDER).permutation(config.num_train_images)
    ids = (order // config.images_per_identity).astype(np.int64)
    imgs = (order % config.images_per_identity).astype(np.int64)

    pool = None
    if config.workers > 1:
        pool = pool_context().Pool(config.workers, initializer=_init_worker, initargs=(config.seed, config.size))
    try:
        start = time.perf_counter()
        progress = Progress(len(ids), desc="synth train", enabled=show_progress)
        with ShardWriter(out, max_bytes=config.shard_size_bytes, max_samples=config.shard_samples) as writer:
            t = 0
            for chunk in _rendered(config, ids, imgs, pool):
                for jpeg in chunk:
                    writer.write(key=f"{ids[t]:08d}_{imgs[t]:06d}", jpeg=jpeg, label=int(ids[t]))
                    t += 1
                progress.update(len(chunk))
        shards = writer.shards
        train_seconds = time.perf_counter() - start
        progress.close()

        pairs_path, accuracy, std = None, None, None
        if config.pairs:
            pair_ids, pair_imgs, issame = heldout_pairs(config)
            progress = Progress(len(pair_ids), desc="synth pairs", enabled=show_progress)
            images: list[bytes] = []
            for chunk in _rendered(config, pair_ids, pair_imgs, pool):
                images.extend(chunk)
                progress.update(len(chunk))
            progress.close()
            meta = {"source": "synthetic", "seed": config.seed, "generator_version": GENERATOR_VERSION,
                    "identities": [config.identities, config.identities + config.heldout_identities]}  # fmt: skip
            pairs = PairSet(name=f"synthetic-{PAIRS_NAME}", images=images, issame=issame, meta=meta)
            pairs_path = save_pairs(out / f"{PAIRS_NAME}{PAIRS_SUFFIX}", pairs)
            baseline = pixel_baseline(pairs)
            accuracy, std = baseline.accuracy_mean, baseline.accuracy_std
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    for transient in ("out_dir", "workers", "render_batch"):
        settings.pop(transient)  # they do not change the output
    extra: dict[str, Any] = {
        "generator": "partial-fc synth",
        "generator_version": GENERATOR_VERSION,
        "settings": settings,
        "labels": "label = identity id; held-out identities never appear in the shards",
    }
    if pairs_path is not None:
        extra["pairs"] = {
            "file": pairs_path.name,
            "num_pairs": config.pairs,
            "identities": [config.identities, config.identities + config.heldout_identities],
            "raw_pixel_baseline": {"accuracy": accuracy, "std": std, "folds": 10},
        }
    manifest = ShardManifest(
        num_classes=config.identities,
        num_samples=config.num_train_images,
        shards=tuple(shards),
        label_map={},
        source={"kind": "synthetic", "seed": config.seed},
        extra=extra,
    )
    return SynthResult(
        manifest_path=write_manifest(out, manifest),
        pairs_path=pairs_path,
        train_images=config.num_train_images,
        train_seconds=train_seconds,
        baseline_accuracy=accuracy,
        baseline_std=std,
    )
