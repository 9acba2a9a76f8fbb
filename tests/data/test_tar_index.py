"""The tar index points at exactly the bytes webdataset reads, counts what it skips, and caches
itself atomically, reused until a shard changes."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from partial_fc.data.formats.shards import ShardWriter
from partial_fc.data.formats.tar_index import INDEX_NAME, SKIP_REASONS, build_index, load_or_build_index
from tests.data.helpers import jpeg, png, write_shards
from tests.tiny_run import make_tiny_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    data = make_tiny_data(tmp_path_factory.mktemp("tiny"))
    names = [s["name"] for s in json.loads((data / "manifest.json").read_text())["shards"]]
    return data, names


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _raw_tar(path: Path, members: list[tuple[str, bytes]], *, fmt: int = tarfile.USTAR_FORMAT) -> str:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_offsets_are_the_bytes_webdataset_reads(tiny: tuple[Path, list[str]]) -> None:
    data, names = tiny
    index = load_or_build_index(data, names, cache=False)
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(data / n) for n in names]), wds.tarfile_to_samples()))
    assert len(index) == len(samples) == 192
    assert index.shard.dtype == np.int32 and index.offset.dtype == index.size.dtype == index.label.dtype == np.int64
    for i, sample in enumerate(samples):  # rows are in shard, then tar order: webdataset's order
        path = index.shard_paths[index.shard[i]]
        assert path == sample["__url__"]
        assert _read(path, int(index.offset[i]), int(index.size[i])) == sample["jpg"]
        assert index.label[i] == int(sample["cls"])
    assert set(index.skipped) == set(SKIP_REASONS) and sum(index.skipped.values()) == 0
    assert index.describe(0) == f"{samples[0]['__key__']!r} in {samples[0]['__url__']} (byte offset {index.offset[0]})"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_pax_headers_and_other_image_extensions(tmp_path: Path, fmt: int) -> None:
    long_key = "d/" + "x" * 150  # > 100 bytes: a GNU long-name member or a pax header precedes it
    members = [(f"{long_key}.jpg", jpeg(1)), (f"{long_key}.cls", b"3"),
               ("é-key.JPEG", jpeg(2)), ("é-key.cls", b" 4\n"),  # extensions are lower-cased, as webdataset does
               ("p.png", png(3)), ("p.cls", b"5"), ("p.json", b"{}")]
    shard = _raw_tar(tmp_path / "s.tar", members, fmt=fmt)
    index = build_index([shard])
    with tarfile.open(shard) as tar:
        images = [m for m in tar.getmembers() if m.name.rsplit(".", 1)[1].lower() in ("jpg", "jpeg", "png")]
        expected = [tar.extractfile(m).read() for m in images]
    assert [_read(shard, int(o), int(s)) for o, s in zip(index.offset, index.size)] == expected
    assert index.label.tolist() == [3, 4, 5]
    assert sum(index.skipped.values()) == 0


def test_bad_samples_and_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [(f"g{k}.jpg", jpeg(k)) for k in range(3)]
    mixed = _raw_tar(tmp_path / "mixed.tar", [
        good[0], ("g0.cls", b"0"),
        ("nolabel.jpg", jpeg(5)),
        ("noimage.cls", b"1"), ("noimage.txt", b"hi"),
        good[1], ("g1.cls", b"1"),
        ("badlabel.jpg", jpeg(6)), ("badlabel.cls", b"seven"),
        ("dup.jpg", jpeg(7)), ("dup.cls", b"2"), ("dup.jpg", jpeg(8)),
        good[2], ("g2.cls", b"2"),
    ])
    (whole,) = write_shards(tmp_path / "w", [6])
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    raw = Path(whole).read_bytes()
    # cut inside sample 4's image: samples 0-3 survive, sample 4 is truncated, the shard damaged
    cut_in_image = tmp_path / "cut_in_image.tar"
    cut_in_image.write_bytes(raw[: members[8].offset_data + 20])
    # cut exactly between samples: tarfile alone would see a shorter, valid archive
    cut_between = tmp_path / "cut_between.tar"
    cut_between.write_bytes(raw[: members[8].offset])
    # a junk header in the middle: tarfile stops there quietly
    junk_middle = tmp_path / "junk_middle.tar"
    junk_middle.write_bytes(raw[: members[8].offset] + b"\x07" * 512 + raw[members[8].offset + 512 :])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar" * 100)
    shards = [mixed, str(cut_in_image), str(cut_between), str(junk_middle), str(junk), str(tmp_path / "missing.tar")]

    index = build_index(shards)
    assert index.skipped == {
        "shards_unreadable": 2, "shards_damaged": 3, "samples_missing_image": 1, "samples_missing_label": 1,
        "samples_bad_label": 1, "samples_truncated": 1, "samples_duplicate_member": 1,
    }
    assert np.bincount(index.shard, minlength=len(shards)).tolist() == [3, 4, 4, 4, 0, 0]
    for i in range(len(index)):  # what was kept is still exact
        assert _read(shards[index.shard[i]], int(index.offset[i]), int(index.size[i]))[:2] == b"\xff\xd8"
    assert index.label[:3].tolist() == [0, 1, 2]


def _index_files(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if "index" in p.name)


def test_cache_is_written_reused_and_rebuilt_when_a_shard_changes(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [5, 7, 4])
    first = load_or_build_index(tmp_path, shards)
    cache = tmp_path / INDEX_NAME
    assert first.reused_shards == 0 and _index_files(tmp_path) == [INDEX_NAME]  # no temporary file left
    with np.load(cache, allow_pickle=False) as z:  # loads without pickle
        assert z["label"].tolist() == first.label.tolist()
    before = os.stat(cache)

    again = load_or_build_index(tmp_path, [Path(s).name for s in shards])  # relative names find the same cache
    assert again.reused_shards == 3
    assert os.stat(cache).st_mtime_ns == before.st_mtime_ns and os.stat(cache).st_ino == before.st_ino  # not rewritten
    for field in ("shard", "offset", "size", "label"):
        assert np.array_equal(getattr(again, field), getattr(first, field))

    # shard 1 rewritten with other samples: only it is indexed anew, and the cache is replaced
    Path(shards[1]).unlink()
    with ShardWriter(tmp_path, prefix="s1", max_samples=100) as writer:
        for k in range(9):
            writer.write(key=f"new{k}", jpeg=jpeg(100 + k), label=6)
    changed = load_or_build_index(tmp_path, shards)
    assert changed.reused_shards == 2 and len(changed) == 5 + 9 + 4
    assert changed.label[5:14].tolist() == [6] * 9
    assert os.stat(cache).st_ino != before.st_ino and _index_files(tmp_path) == [INDEX_NAME]
    assert load_or_build_index(tmp_path, shards).reused_shards == 3

    # same size, new mtime only: still re-read (the cache cannot know the bytes are the same)
    st = os.stat(shards[2])
    os.utime(shards[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_or_build_index(tmp_path, shards).reused_shards == 2


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [4])
    (tmp_path / INDEX_NAME).write_bytes(b"PK\x03\x04 not really a zip")
    index = load_or_build_index(tmp_path, shards)
    assert index.reused_shards == 0 and len(index) == 4
    assert load_or_build_index(tmp_path, shards).reused_shards == 1


def test_unwritable_cache_keeps_the_index_in_memory(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [4])
    (tmp_path / INDEX_NAME).mkdir()  # cannot be replaced by a file, even by root (unlike a chmod)
    with pytest.warns(UserWarning, match="keeping the index in memory"):
        index = load_or_build_index(tmp_path, shards)
    assert len(index) == 4 and (tmp_path / INDEX_NAME).is_dir()
    assert _index_files(tmp_path) == [INDEX_NAME]  # the temporary file was removed


def _build(args: tuple[str, list[str]]) -> list[int]:
    return load_or_build_index(args[0], args[1]).label.tolist()


def test_concurrent_builders_leave_one_valid_cache(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [30, 30, 30, 30])
    with mp.get_context("fork").Pool(4) as pool:  # 4 "ranks" index and write at once
        results = pool.map(_build, [(str(tmp_path), shards)] * 4)
    assert all(r == results[0] for r in results) and len(results[0]) == 120
    assert _index_files(tmp_path) == [INDEX_NAME]
    reloaded = load_or_build_index(tmp_path, shards)
    assert reloaded.reused_shards == 4 and reloaded.label.tolist() == results[0]
