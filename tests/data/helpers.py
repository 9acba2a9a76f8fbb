"""Small real files for the data tests: JPEGs, PNGs and shards written here, not mocked."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from partial_fc.data.formats.shards import ShardWriter


def image(seed: int, size: int = 32) -> np.ndarray:
    """A smooth random RGB image (smooth so JPEG round trips stay close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def jpeg(seed: int, size: int = 32, quality: int = 95) -> bytes:
    return simplejpeg.encode_jpeg(image(seed, size), quality=quality, colorspace="RGB")


def png(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(out: Path, counts: list[int], *, size: int = 32, label_of=lambda i: i % 7) -> list[str]:
    """Shards holding counts[k] samples each; sample i (global) has label label_of(i)."""
    paths, i = [], 0
    for k, n in enumerate(counts):
        with ShardWriter(out, prefix=f"s{k}", max_samples=n) as writer:
            for _ in range(n):
                writer.write(key=f"{i:06d}", jpeg=jpeg(i, size), label=label_of(i))
                i += 1
        paths += [str(out / s.name) for s in writer.shards]
    return paths
