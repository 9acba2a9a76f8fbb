"""JPEGs damaged behind intact headers: libjpeg warns ("premature end of data", "Premature end of
JPEG file") and fills the rest with garbage, and PIL decodes them without a word. A warning is
corruption here: such samples are skipped and counted, never trained on."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from partial_fc.data.formats.images import CorruptImageError, decode_rgb
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.stream import build_stream_loader
from tests.data.helpers import jpeg

N = 50


def _noisy_jpeg(seed: int) -> bytes:
    """A 64x64 JPEG with real entropy-coded content (noise), so damage has data to hit."""
    rng = np.random.default_rng(seed)
    return simplejpeg.encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=90, colorspace="RGB")


def _scan_start(data: bytes) -> int:
    """First byte of entropy-coded data: after the start-of-scan marker's segment."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def damaged(seed: int, *, truncate: bool = False) -> bytes:
    """The JPEG of ``seed`` with its scan zeroed from a random point on, the end-of-image marker
    kept (a block of a file lost), or cut short there; the headers stay intact either way."""
    data = _noisy_jpeg(seed)
    start = _scan_start(data)
    cut = start + int(np.random.default_rng(seed + 1000).integers(20, len(data) - start - 20))
    return data[:cut] if truncate else data[:cut] + bytes(len(data) - 2 - cut) + b"\xff\xd9"


def test_damaged_jpegs_are_corrupt_though_pil_decodes_them() -> None:
    for seed in range(N):
        data = damaged(seed)
        assert simplejpeg.decode_jpeg_header(data)[:2] == (64, 64)  # headers intact
        # What made them slip through: libjpeg's warning is not an error without strict mode,
        # and PIL (the fallback) ignores it and returns an image.
        assert simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False).shape == (64, 64, 3)
        with Image.open(io.BytesIO(data)) as image:
            assert np.asarray(image.convert("RGB")).shape == (64, 64, 3)
        with pytest.raises(CorruptImageError, match=r"damaged JPEG .*Corrupt JPEG data: (premature end of data segment|\d+ extraneous bytes)"):
            decode_rgb(data)
        with pytest.raises(CorruptImageError, match=r"damaged JPEG .*Premature end of JPEG file"):
            decode_rgb(damaged(seed, truncate=True))  # PIL refused these already; libjpeg's warning says why
    assert decode_rgb(_noisy_jpeg(0)).shape == (64, 64, 3)  # the intact originals decode


def test_damaged_jpegs_in_a_shard_are_skipped_and_counted(tmp_path: Path) -> None:
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(N + 10):
            data, label = (jpeg(i), b"1") if i % 6 == 5 else (damaged(i, truncate=i % 2 == 1), b"2")  # 10 good, the last one good
            for name, body in ((f"{i:04d}.jpg", data), (f"{i:04d}.cls", label)):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    config = TrainLoaderConfig(shards=(str(shard),), batch_size=10, image_size=32, num_workers=0, shuffle_buffer=1,
                               flip=False, steps_per_epoch=1)
    loader = build_stream_loader(config, rank=0, world_size=1)
    (_, labels), = list(loader)
    assert labels.tolist() == [1] * 10  # only the intact images
    assert loader.stats.corrupt_samples == N
