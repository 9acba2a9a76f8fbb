"""The identity-balanced loader: P x K batches of the right bytes, disjoint across ranks,
world-size invariant, deterministic whatever the workers, resumable without reading the skipped
batches, and a corrupt JPEG replaced (batch size kept) and counted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds

from partial_fc.data.loaders.build import build_loader
from partial_fc.data.loaders.identity import IdentityBatchLoader
from partial_fc.data.formats.images import decode_rgb
from partial_fc.data.loaders.stream import StreamLoader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError
from partial_fc.data.formats.shards import ShardWriter
from partial_fc.data.loaders.worker_stream import to_float_chw
from tests.data.helpers import jpeg
from tests.tiny_run import make_tiny_data

K = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))  # 24 identities x 8 images, 32x32, 4 shards


def _config(data: Path, **kw: Any) -> TrainLoaderConfig:
    base = dict(batch_size=8, image_size=32, num_workers=0, seed=5, worker_start_method="fork")
    return TrainLoaderConfig.from_manifest(data, **{**base, **kw})


def _loader(data: Path, *, rank: int = 0, world_size: int = 1, **kw: Any) -> IdentityBatchLoader:
    return IdentityBatchLoader(_config(data, **kw), images_per_identity=K, rank=rank, world_size=world_size)


def _jpegs_in_index_order(data: Path) -> list[bytes]:
    """Every sample's JPEG as webdataset reads it; the index lists samples in this order."""
    names = [s["name"] for s in json.loads((data / "manifest.json").read_text())["shards"]]
    urls = [str(data / n) for n in names]
    return [s["jpg"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_batches_are_p_identities_times_k_images_identity_major(tiny: Path) -> None:
    loader = _loader(tiny)
    batches = list(loader)
    assert len(batches) == len(loader) == 192 // 8  # an epoch means what it means for the streaming loader
    assert len(loader.sampler) == 24 // 2  # so this epoch is two sampler passes
    for images, labels in batches:
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
        assert -1 <= images.min() and images.max() <= 1
        rows = labels.view(2, K)
        assert (rows == rows[:, :1]).all() and rows[0, 0] != rows[1, 0]  # identity-major, 2 identities
    for half in (batches[:12], batches[12:]):  # each sampler pass shows every identity once
        identities = [int(c) for _, labels in half for c in labels.view(2, K)[:, 0]]
        assert sorted(identities) == list(range(24))
    assert loader.stats.batches == 24 and loader.stats.samples == 192 and loader.stats.corrupt_samples == 0
    assert loader.epoch == 1


def test_ranks_disjoint_and_world_size_invariant(tiny: Path) -> None:
    # 2 ranks x P = 2 against 1 rank x P = 4: the same global batch, sample for sample, flips included
    ranks = [list(_loader(tiny, rank=r, world_size=2, flip=True)) for r in range(2)]
    single = list(_loader(tiny, batch_size=16, flip=True))
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 192 // 16
    for t, (images, labels) in enumerate(single):
        ids = [set(ranks[r][t][1].tolist()) for r in range(2)]
        assert not ids[0] & ids[1]
        assert torch.equal(torch.cat([ranks[0][t][0], ranks[1][t][0]]), images)
        assert torch.equal(torch.cat([ranks[0][t][1], ranks[1][t][1]]), labels)


def test_deterministic_whatever_the_workers(tiny: Path) -> None:
    zero = list(_loader(tiny, num_workers=0, flip=True))
    two = list(_loader(tiny, num_workers=2, flip=True))
    assert _same(zero, two)
    other_seed = list(_loader(tiny, seed=6))
    assert not _same(zero, other_seed)


@pytest.mark.parametrize("sampler", ["stream", "identity"])
def test_iterate_from_start_is_the_tail_of_a_full_pass(tiny: Path, sampler: str) -> None:
    config = _config(tiny, shuffle_buffer=50)
    loader = build_loader(config, sampler=sampler, images_per_identity=K, rank=0, world_size=1)
    loader.set_epoch(1)
    full = list(loader)
    loader.set_epoch(1)
    read_before = loader.stats.samples
    tail = list(loader.iterate(9))
    assert len(tail) == len(loader) - 9 and _same(full[9:], tail)
    assert loader.epoch == 2  # a finished resume advances the epoch like a full pass
    assert list(loader.iterate(len(loader))) == []
    if sampler == "identity":  # random access: the skipped batches are never read
        assert loader.stats.samples - read_before == 8 * len(tail)
    with pytest.raises(ValueError, match=r"start must be in \[0, 24\].*got 25"):
        loader.iterate(25)


def test_images_are_the_decoded_jpegs(tiny: Path) -> None:
    jpegs = _jpegs_in_index_order(tiny)
    plain = _loader(tiny, flip=False)
    flipped = _loader(tiny, flip=True)
    steps = len(plain.sampler)
    flips = 0
    for t, ((images, labels), (f_images, _)) in enumerate(zip(plain, flipped)):
        samples = plain.sampler.batch(t % steps, epoch=t // steps)
        decoded = np.stack([decode_rgb(jpegs[i]) for i in samples])
        assert torch.equal(images, to_float_chw(decoded))
        assert labels.tolist() == plain.index.label[samples].tolist()
        for j in range(len(samples)):
            mirrored = torch.equal(f_images[j], images[j].flip(-1))
            assert mirrored or torch.equal(f_images[j], images[j])
            flips += mirrored
    assert 0.3 < flips / (24 * 8) < 0.7  # p = 0.5


def test_images_not_at_image_size_are_resized_and_counted(tiny: Path) -> None:
    loader = _loader(tiny, image_size=40)
    images, _ = next(iter(loader.iterate(23)))
    assert images.shape == (8, 3, 40, 40) and loader.stats.resized == 8


def _identity_shards(out: Path, bad: dict[int, bytes]) -> Path:
    """6 identities x 4 images (label i // 4) in 2 shards; sample i's JPEG replaced by bad[i]."""
    with ShardWriter(out, max_samples=12) as writer:
        for i in range(24):
            writer.write(key=f"{i:04d}", jpeg=bad.get(i, jpeg(i)), label=i // 4)
    return out


def _config_for(out: Path, **kw: Any) -> TrainLoaderConfig:
    shards = tuple(str(p) for p in sorted(out.glob("*.tar")))
    base = dict(batch_size=8, image_size=32, num_workers=0, flip=False, num_samples=24, num_classes=6)
    return TrainLoaderConfig(shards=shards, **{**base, **kw})


def test_corrupt_jpeg_is_replaced_by_its_identity_and_counted(tmp_path: Path) -> None:
    good = jpeg(9)
    out = _identity_shards(tmp_path, {9: good[: len(good) // 3]})  # truncated JPEG, identity 2
    loader = IdentityBatchLoader(_config_for(out), images_per_identity=K, rank=0, world_size=1)
    assert len(loader) == len(loader.sampler) == 3  # one epoch = one pass: sample 9 drawn exactly once
    (where,) = [t for t in range(3) if 9 in loader.sampler.batch(t)]
    batches = list(loader)
    assert all(len(labels) == 8 for _, labels in batches)
    assert loader.stats.corrupt_samples == 1 and loader.stats.read_errors == 0
    samples = loader.sampler.batch(where)
    slot = samples.index(9)
    images, labels = batches[where]
    assert labels.tolist() == [loader.index.label[i] for i in samples]  # labels unchanged
    others = [to_float_chw(decode_rgb(jpeg(i))[None])[0] for i in (8, 10, 11)]  # identity 2's other images
    assert any(torch.equal(images[slot], o) for o in others)
    again = IdentityBatchLoader(_config_for(out), images_per_identity=K, rank=0, world_size=1)
    assert torch.equal(list(again)[where][0], images)  # the replacement is deterministic


def test_identity_without_a_decodable_image_raises(tmp_path: Path) -> None:
    out = _identity_shards(tmp_path, {i: b"\xff\xd8 not a jpeg" for i in range(4, 8)})  # all of identity 1
    loader = IdentityBatchLoader(_config_for(out), images_per_identity=K, rank=0, world_size=1)
    with pytest.raises(DataError, match="identity 1 has no decodable image: all 4"):
        list(loader)
    strict = IdentityBatchLoader(_config_for(out, max_corrupt_in_a_row=2), images_per_identity=K, rank=0, world_size=1)
    with pytest.raises(DataError, match="3 samples in a row failed.*max_corrupt_in_a_row = 2"):
        list(strict)


@pytest.mark.parametrize("kw, k, world_size, match", [
    (dict(batch_size=10), 4, 1, "batch_size 10 is not a multiple of images_per_identity 4"),
    (dict(batch_size=8), 0, 1, "images_per_identity must be an integer >= 1, got 0"),
    (dict(batch_size=8), 1, 4, r"only 24 identities .* fewer than p \* world_size = 32"),
    (dict(batch_size=8, num_classes=10), 4, 1, r"label 1\d of sample '\w+' in .*train-\d+\.tar .* outside \[0, 10\)"),
])
def test_errors_name_the_value(tiny: Path, kw: dict, k: int, world_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IdentityBatchLoader(_config(tiny, **kw), images_per_identity=k, rank=0, world_size=world_size)


def test_build_loader_picks_the_sampler(tiny: Path) -> None:
    config = _config(tiny)
    assert isinstance(build_loader(config, sampler="stream", images_per_identity=K, rank=0, world_size=1), StreamLoader)
    assert isinstance(build_loader(config, sampler="identity", images_per_identity=K, rank=0, world_size=1),
                      IdentityBatchLoader)
    with pytest.raises(ValueError, match=r"must be one of \['stream', 'identity'\], got 'pk'"):
        build_loader(config, sampler="pk", images_per_identity=K, rank=0, world_size=1)


def test_identities_drawn_with_replacement_keep_the_batch_full(tmp_path: Path) -> None:
    # identity c has 1 + c % 3 images, fewer than K = 4: small_identities="replace" (the default) keeps them
    with ShardWriter(tmp_path, max_samples=100) as writer:
        i = 0
        for c in range(8):
            for _ in range(1 + c % 3):
                writer.write(key=f"{i:04d}", jpeg=jpeg(i), label=c)
                i += 1
    loader = IdentityBatchLoader(_config_for(tmp_path, num_samples=i, num_classes=8), images_per_identity=K,
                                 rank=0, world_size=1)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 8 * len(loader) and set(Counter(labels.tolist()).values()) <= {4, 8, 12}


def test_data_directory_given_relative_to_the_working_directory(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the manifest's shard paths are then relative to the cwd, not to the data directory
    monkeypatch.chdir(tiny.parent)
    relative = _loader(Path(tiny.name))
    assert len(relative.index) == len(_loader(tiny).index) == 192
    assert (tiny / "tar_index.npz").exists()
