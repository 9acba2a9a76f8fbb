"""Folder of identity folders -> shards -> training loader, checked pixel by pixel."""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from partial_fc.data import cli
from partial_fc.data.convert.common import ConvertConfig
from partial_fc.data.convert.folder import convert_folder
from partial_fc.data.loaders.stream import build_stream_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.formats.manifest import load_manifest
from tests.data.helpers import jpeg, png

IDENTITIES = ["carol", "alice", "bob"]


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    src = tmp_path / "faces"
    seed = 0
    for name in IDENTITIES:
        (src / name).mkdir(parents=True)
        for k in range(4):
            seed += 1
            if k == 3:
                (src / name / f"{k}.png").write_bytes(png(seed))
            else:
                (src / name / f"{k}.jpg").write_bytes(jpeg(seed))
    (src / "alice" / "notes.txt").write_text("not an image")
    (src / "bob" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (src / "empty").mkdir()
    (src / "README").write_text("loose file")
    return src


def _shard_samples(out: Path) -> list[tuple[bytes, int]]:
    manifest = load_manifest(out)
    samples = []
    for shard in manifest.shard_paths(out):
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        by_name = dict(members)
        samples += [(data, int(by_name[name[:-4] + ".cls"])) for name, data in members if name.endswith(".jpg")]
    return samples


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_to_shards(faces: Path, tmp_path: Path, workers: int) -> None:
    out = tmp_path / f"shards{workers}"
    manifest = convert_folder(faces, ConvertConfig(out_dir=out, shard_size_bytes=1 << 14, workers=workers, show_progress=False))
    assert manifest.label_map == {"alice": 0, "bob": 1, "carol": 2}  # sorted folder names
    assert manifest.num_samples == 12 and manifest.num_classes == 3
    assert manifest.skipped == {
        "files_outside_identity_folders": 1,
        "folders_without_images": 1,
        "non_image_files": 1,
        "undecodable_image": 1,
    }
    assert len(manifest.shards) > 1  # 16 KiB shards: the size cap splits them
    assert all(s.num_bytes <= 1 << 14 for s in manifest.shards)
    assert [s.num_bytes for s in manifest.shards] == [(out / s.name).stat().st_size for s in manifest.shards]
    assert not list(out.glob("*.tmp"))
    samples = _shard_samples(out)
    labels = [label for _, label in samples]
    assert labels != sorted(labels)  # globally shuffled, not grouped by identity
    by_label = {label: [] for label in range(3)}
    for data, label in samples:
        by_label[label].append(data)
    for name, label in manifest.label_map.items():
        originals = [p.read_bytes() for p in sorted((faces / name).glob("*.jpg")) if p.name != "broken.jpg"]
        # JPEGs are stored byte for byte; the one PNG per identity was re-encoded
        assert sorted(d for d in by_label[label] if d in originals) == sorted(originals)
        (reencoded,) = [d for d in by_label[label] if d not in originals]
        png_pixels = np.asarray(Image.open(faces / name / "3.png").convert("RGB"))
        decoded = simplejpeg.decode_jpeg(reencoded, colorspace="RGB")
        # JPEG quality 95 on a smooth image: within a few grey levels on average
        assert np.abs(decoded.astype(int) - png_pixels.astype(int)).mean() < 3.0


def test_loader_reads_back_every_sample(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    convert_folder(faces, ConvertConfig(out_dir=out, shard_size_bytes=1 << 30, show_progress=False))
    expected = {}
    for data, label in _shard_samples(out):
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
        expected[pixels.tobytes()] = label
    # One shard, one stream, no shuffling, no flip: one pass of the loader is the shard itself.
    config = TrainLoaderConfig.from_manifest(
        out, batch_size=4, image_size=32, num_workers=0, shuffle_buffer=1, flip=False, steps_per_epoch=3
    )
    loader = build_stream_loader(config, rank=0, world_size=1)
    seen = []
    for images, labels in loader:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert images.min() >= -1.0 and images.max() <= 1.0
        pixels = torch.round((images + 1.0) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for k in range(len(labels)):
            seen.append((pixels[k].tobytes(), int(labels[k])))
    assert len(seen) == 12
    assert dict(seen) == expected  # every sample once, each with its own label
    assert loader.stats.samples == 12 and loader.stats.corrupt_samples == 0


def test_flip(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    convert_folder(faces, ConvertConfig(out_dir=out, show_progress=False))
    base = dict(batch_size=12, image_size=32, num_workers=0, shuffle_buffer=1, steps_per_epoch=1)
    plain = next(iter(build_stream_loader(TrainLoaderConfig.from_manifest(out, flip=False, **base), rank=0, world_size=1)))
    flipped = next(iter(build_stream_loader(TrainLoaderConfig.from_manifest(out, flip=True, **base), rank=0, world_size=1)))
    assert torch.equal(plain[1], flipped[1])
    mirrored = [torch.equal(flipped[0][k], plain[0][k].flip(-1)) for k in range(12)]
    unchanged = [torch.equal(flipped[0][k], plain[0][k]) for k in range(12)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and 0 < sum(mirrored) < 12  # about half


def test_cli_convert_folder_and_info(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["convert", "--from", "folder", str(faces), "--out", str(out), "--workers", "1", "--quiet"])
    assert cli.run(args) == 0
    assert cli.run(parser.parse_args(["info", str(out)])) == 0
    text = capsys.readouterr().out
    assert "12 samples of 3 classes" in text and "undecodable_image=1" in text
    bad = parser.parse_args(["convert", "--from", "folder", str(tmp_path / "missing"), "--out", str(out), "--quiet"])
    assert cli.run(bad) == 2
    assert "missing" in capsys.readouterr().err
