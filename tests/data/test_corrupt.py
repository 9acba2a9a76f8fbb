"""Bad data is skipped and counted by the loader, never a crash and never a hang."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from partial_fc.data.loaders.stream import build_stream_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError
from tests.data.helpers import jpeg, write_shards


def _raw_shard(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _config(shards: list[str], **kw) -> TrainLoaderConfig:  # type: ignore[no-untyped-def]
    base = dict(batch_size=6, image_size=32, num_workers=0, shuffle_buffer=1, flip=False, steps_per_epoch=1)
    return TrainLoaderConfig(shards=tuple(shards), **{**base, **kw})


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_samples_skipped_and_counted(tmp_path: Path, workers: int) -> None:
    good = [(f"g{k}", jpeg(k)) for k in range(6)]
    truncated = jpeg(99)[: len(jpeg(99)) // 2]
    members = []
    for k, (key, data) in enumerate(good):
        members += [(f"{key}.jpg", data), (f"{key}.cls", str(k).encode())]
        if k == 1:
            members += [("bad0.jpg", b"definitely not an image"), ("bad0.cls", b"1")]
            members += [("bad1.jpg", truncated), ("bad1.cls", b"2")]
        if k == 3:
            members += [("bad2.jpg", jpeg(7)), ("bad2.cls", b"seven")]  # label does not parse
            members += [("bad3.jpg", jpeg(8))]  # no label at all
    shard = _raw_shard(tmp_path / "mixed.tar", members)
    loader = build_stream_loader(_config([shard], num_workers=workers), rank=0, world_size=1)
    (images, labels), = list(loader)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]  # exactly the good samples, in order
    assert loader.stats.corrupt_samples == 4
    assert loader.stats.samples == 6 and loader.stats.batches == 1


def test_truncated_shard_counted_as_read_error(tmp_path: Path) -> None:
    (whole,) = write_shards(tmp_path / "a", [8])
    with tarfile.open(whole) as tar:
        fifth = tar.getmembers()[8]  # sample 4's .jpg
    assert fifth.name.endswith(".jpg") and fifth.size > 20
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(whole).read_bytes()[: fifth.offset_data + 20])  # ends inside a JPEG member
    (other,) = write_shards(tmp_path / "b", [8])
    loader = build_stream_loader(_config([str(cut), other], batch_size=4, steps_per_epoch=6), rank=0, world_size=1)
    assert sum(1 for _ in loader) == 6
    assert loader.stats.read_errors >= 1


@pytest.mark.timeout(60)
def test_no_readable_shard_is_an_error_not_a_hang(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 10 + b"garbage" * 100)
    loader = build_stream_loader(_config([str(junk), str(tmp_path / "missing.tar")]), rank=0, world_size=1)
    with pytest.raises(DataError, match="shards in a row gave no sample"):
        list(loader)
    assert loader.stats.batches == 0


def test_label_outside_num_classes_is_an_error(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, [6], label_of=lambda i: 100 + i)
    loader = build_stream_loader(_config([shard], num_classes=50), rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"label 100 of sample .* outside \[0, 50\)"):
        list(loader)


@pytest.mark.timeout(60)
def test_only_corrupt_samples_is_an_error_not_a_hang(tmp_path: Path) -> None:
    members = [m for k in range(5) for m in ((f"{k}.jpg", b"not a jpeg"), (f"{k}.cls", b"1"))]
    shard = _raw_shard(tmp_path / "bad.tar", members)
    loader = build_stream_loader(_config([shard], max_corrupt_in_a_row=20), rank=0, world_size=1)
    with pytest.raises(DataError, match="21 samples in a row failed to decode"):
        list(loader)
