"""Lost data never vanishes silently: shards truncated for real (mid-member, at a member
boundary), missing, emptied or 0 bytes are found against the manifest before any batch, named,
skipped and counted; a shard that ends early only when read is named when read; what training
cannot go on with is one line."""

from __future__ import annotations

import os
import tarfile
import warnings
from pathlib import Path

import pytest

from partial_fc.data.formats.manifest import ShardManifest, write_manifest
from partial_fc.data.formats.shards import ShardWriter
from partial_fc.data.loaders.build import build_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_check import DataError, DataWarning
from tests.data.helpers import jpeg

SHARDS, PER_SHARD, CLASSES = 4, 8, 8


def _data_dir(root: Path, *, label_of=lambda i: i % CLASSES) -> Path:  # type: ignore[no-untyped-def]
    """A real data set: SHARDS shards of PER_SHARD samples and their manifest."""
    with ShardWriter(root, prefix="train", max_samples=PER_SHARD) as writer:
        for i in range(SHARDS * PER_SHARD):
            writer.write(key=f"{i:06d}", jpeg=jpeg(i), label=label_of(i))
    manifest = ShardManifest(num_classes=CLASSES, num_samples=SHARDS * PER_SHARD, shards=tuple(writer.shards),
                             label_map={}, source={"kind": "test"})
    write_manifest(root, manifest)
    return root


def _member_offsets(path: Path) -> list[tuple[int, int, str]]:
    """(header offset, data offset, name) of each member, read with tarfile (the oracle)."""
    with tarfile.open(path) as tar:
        return [(m.offset, m.offset_data, m.name) for m in tar.getmembers()]


def _loader(root: Path, sampler: str = "stream", **kw):  # type: ignore[no-untyped-def]
    base = dict(batch_size=4, image_size=32, num_workers=0, shuffle_buffer=1, flip=False)
    config = TrainLoaderConfig.from_manifest(root, **{**base, **kw})
    return build_loader(config, sampler=sampler, images_per_identity=2, rank=0, world_size=1)


def _read_all(loader) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(v) for _, labels in loader for v in labels]


@pytest.mark.parametrize("sampler", ["stream", "identity"])
def test_truncated_mid_member_is_named_and_counted_before_reading(tmp_path: Path, sampler: str) -> None:
    root = _data_dir(tmp_path)
    shard = root / "train-000001.tar"
    members = _member_offsets(shard)
    _, data_at, name = members[6]  # sample 3's .jpg: samples 0-2 survive whole
    assert name.endswith(".jpg")
    os.truncate(shard, data_at + 50)  # the cut lies inside the JPEG's bytes
    with pytest.warns(DataWarning, match=r"0 of 4 shards missing, 1 damaged, 5 samples lost"):
        loader = _loader(root, sampler)
    stats = loader.stats
    assert (stats.shards_missing, stats.shards_damaged, stats.samples_lost) == (0, 1, PER_SHARD - 3)
    assert str(shard) in stats.problems and "3 of 8 samples readable, 5 lost" in stats.problems[str(shard)]
    assert len(_read_all(loader)) == len(loader) * 4  # the run goes on with what is readable


@pytest.mark.parametrize("sampler", ["stream", "identity"])
def test_truncated_at_a_member_boundary_is_found_though_tar_reads_it_quietly(tmp_path: Path, sampler: str) -> None:
    root = _data_dir(tmp_path)
    shard = root / "train-000002.tar"
    header_at = _member_offsets(shard)[10][0]  # the header of sample 5's .jpg: 5 samples survive
    os.truncate(shard, header_at)
    with tarfile.open(shard, "r|") as tar:  # the reason it went unnoticed: a stream read sees no error
        assert sum(1 for m in tar if m.name.endswith(".cls")) == 5
    with pytest.warns(DataWarning, match=r"train-000002.tar: .* 5 of 8 samples readable, 3 lost"):
        loader = _loader(root, sampler)
    assert (loader.stats.shards_damaged, loader.stats.samples_lost) == (1, 3)


def test_missing_shard_is_left_out_named_and_counted(tmp_path: Path) -> None:
    root = _data_dir(tmp_path)
    (root / "train-000003.tar").unlink()
    with pytest.warns(DataWarning, match=r"1 of 4 shards missing, 0 damaged, 8 samples lost .*train-000003.tar: missing"):
        loader = _loader(root, steps_per_epoch=3)
    labels = _read_all(loader)
    assert len(labels) == 12 and loader.stats.read_errors == 0  # never opened: it was left out up front
    assert loader.stats.as_dict()["shards_missing"] == 1 and loader.stats.samples_lost == PER_SHARD


@pytest.mark.parametrize("content", [b"", bytes(10240)], ids=["zero-bytes", "empty-tar"])
def test_empty_shard_is_damaged_with_every_sample_lost(tmp_path: Path, content: bytes) -> None:
    root = _data_dir(tmp_path)
    (root / "train-000000.tar").write_bytes(content)
    with pytest.warns(DataWarning, match=r"train-000000.tar: .* 0 of 8 samples readable, 8 lost"):
        loader = _loader(root, steps_per_epoch=2)
    assert (loader.stats.shards_damaged, loader.stats.samples_lost) == (1, PER_SHARD)
    assert len(_read_all(loader)) == 8


def test_nothing_left_is_one_line_naming_a_file(tmp_path: Path) -> None:
    root = _data_dir(tmp_path)
    for k in range(SHARDS):
        (root / f"train-{k:06d}.tar").unlink()
    with pytest.raises(DataError, match=r"^none of the 4 shards exists \(first: .*train-000000.tar\)") as err:
        _loader(root)
    assert "\n" not in str(err.value)
    _data_dir(root)
    for k in range(SHARDS):
        (root / f"train-{k:06d}.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"^no shard has a readable sample \(first: .*train-000000.tar: 0 bytes"):
        _loader(root)


def test_shard_that_ends_early_only_when_read_is_named_then(tmp_path: Path) -> None:
    # Same size as the manifest records, but a header in the middle is overwritten: tarfile
    # ends the archive there without an error, so only the count of samples read shows it.
    root = _data_dir(tmp_path)
    shard = root / "train-000001.tar"
    header_at = _member_offsets(shard)[8][0]  # sample 4's .jpg header: 4 samples before it
    with open(shard, "r+b") as f:
        f.seek(header_at)
        f.write(b"\x01" * 512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is wrong before reading
        loader = _loader(root, steps_per_epoch=6, num_workers=1)
    assert loader.stats.problems == {}
    with pytest.warns(DataWarning, match=r"rank 0: .*train-000001.tar: read 4 of 8 samples, 4 lost"):
        _read_all(loader)  # 24 samples: every shard is read once
    assert (loader.stats.shards_damaged, loader.stats.samples_lost) == (1, 4)
    _read_all(loader)  # the next epoch reads it again: named and counted once
    assert (loader.stats.shards_damaged, loader.stats.samples_lost) == (1, 4)
    # The identity loader reads every header for its index: it names the shard before any batch.
    with pytest.warns(DataWarning, match=r"train-000001.tar: read 4 of 8 samples \(in the tar index\), 4 lost"):
        identity = _loader(root, "identity")
    assert (identity.stats.shards_damaged, identity.stats.samples_lost) == (1, 4)


@pytest.mark.parametrize("workers", [0, 1])
def test_label_outside_the_class_range_is_one_line_from_a_worker(tmp_path: Path, workers: int) -> None:
    root = _data_dir(tmp_path, label_of=lambda i: 500 if i == 13 else i % CLASSES)
    loader = _loader(root, steps_per_epoch=8, num_workers=workers)
    with pytest.raises(DataError) as err:
        _read_all(loader)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message and "DataLoader worker" not in message
    assert message.startswith("label 500 of sample '000013' in ") and "train-000001.tar is outside [0, 8)" in message


def test_identity_loader_names_a_label_outside_the_range_before_any_batch(tmp_path: Path) -> None:
    root = _data_dir(tmp_path, label_of=lambda i: 500 if i == 13 else i % CLASSES)
    with pytest.raises(DataError, match=r"^label 500 of sample '000013' in .*train-000001.tar .*outside \[0, 8\)"):
        _loader(root, "identity")



def _info_check(root: Path, *flags: str) -> int:
    import argparse

    from partial_fc.data import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["info", str(root), "--check", *flags]))


def test_data_info_check_finds_everything_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = _data_dir(tmp_path / "clean")
    assert _info_check(clean, "--decode") == 0
    assert capsys.readouterr().out.endswith("check: no problem found\n")

    root = _data_dir(tmp_path / "bad", label_of=lambda i: 500 if i == 13 else i % CLASSES)
    os.truncate(root / "train-000002.tar", _member_offsets(root / "train-000002.tar")[10][0])  # 5 of 8 left
    (root / "train-000003.tar").unlink()
    shard = root / "train-000000.tar"  # sample 1's JPEG: intact header, the rest zeroed (same size)
    _, data_at, name = _member_offsets(shard)[2]
    assert name == "000001.jpg"
    body = jpeg(1)
    scan = body.index(b"\xff\xda") + 2 + int.from_bytes(body[body.index(b"\xff\xda") + 2:][:2], "big")
    cut = (scan + len(body)) // 2  # midway through the entropy-coded data; the end marker kept
    with open(shard, "r+b") as f:
        f.seek(data_at + cut)
        f.write(bytes(len(body) - cut - 2))
    assert _info_check(root) == 1
    out = capsys.readouterr().out
    assert "train-000002.tar: " in out and "5 of 8 samples readable, 3 lost" in out
    assert "train-000003.tar: missing, 8 samples lost" in out
    assert "label 500 of sample '000013' in " in out
    assert out.endswith("check: 2 shard problems, 1 label problems (images not decoded; --decode decodes them)\n")
    assert _info_check(root, "--decode") == 1
    out = capsys.readouterr().out
    assert f"sample '000001' in {shard}" in out and "damaged JPEG" in out
    assert out.endswith("check: 2 shard problems, 1 label problems, 1 image problems\n")
