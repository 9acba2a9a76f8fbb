"""Verification pairs in the project's own format, ``*.pairs.npz`` (no pickle anywhere).

Images are stored in pair order: images 2i and 2i+1 form pair i, ``issame[i]`` says whether
they show the same identity (the InsightFace .bin order). Keys of the .npz (format version 1):

    format       0-d str, "partial-fc-pairs"
    version      0-d int64, 1
    name         0-d str, e.g. "lfw" or "synthetic-heldout"
    issame       (N,) bool
    encoding     0-d str, "jpeg" or "raw"
    jpeg_data    (total,) uint8, the JPEG files back to back        (encoding "jpeg")
    jpeg_offsets (2N+1,) int64, image k is jpeg_data[o[k]:o[k+1]]    (encoding "jpeg")
    pixels       (2N, H, W, 3) uint8 RGB                             (encoding "raw")
    meta         0-d str, JSON: where the pairs came from

It loads with ``np.load(path, allow_pickle=False)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partial_fc.util.atomic import write_atomic
from partial_fc.data.formats.images import CorruptImageError, decode_rgb

PAIRS_FORMAT = "partial-fc-pairs"
PAIRS_VERSION = 1
PAIRS_SUFFIX = ".pairs.npz"


@dataclass(frozen=True)
class PairSet:
    """``images``: 2N encoded images (list of bytes) or a (2N, H, W, 3) uint8 array."""

    name: str
    images: list[bytes] | np.ndarray
    issame: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        issame = np.asarray(self.issame)
        if issame.ndim != 1 or issame.dtype != np.bool_:
            raise ValueError(f"issame must be a 1-D bool array, got shape {issame.shape} dtype {issame.dtype}")
        if len(self.images) != 2 * len(issame):
            raise ValueError(f"{self.name}: {len(self.images)} images for {len(issame)} pairs, expected {2 * len(issame)}")
        if isinstance(self.images, np.ndarray) and (self.images.dtype != np.uint8 or self.images.ndim != 4):
            raise ValueError(f"raw pair images must be (2N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def image(self, k: int) -> np.ndarray:
        """Image k decoded to (H, W, 3) uint8 RGB."""
        item = self.images[k]
        if isinstance(item, np.ndarray):
            return item
        try:
            return decode_rgb(item)
        except CorruptImageError as err:
            source = self.meta.get("file", self.name)
            raise CorruptImageError(f"{source}: image {k} (pair {k // 2}) does not decode: {err}") from None


def save_pairs(path: str | Path, pairs: PairSet) -> Path:
    """Write ``pairs`` to ``path`` (which should end in .pairs.npz) atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(PAIRS_FORMAT),
        "version": np.array(PAIRS_VERSION, dtype=np.int64),
        "name": np.array(pairs.name),
        "issame": np.asarray(pairs.issame, dtype=np.bool_),
        "meta": np.array(json.dumps(pairs.meta, sort_keys=True)),
    }
    if isinstance(pairs.images, np.ndarray):
        arrays["encoding"] = np.array("raw")
        arrays["pixels"] = pairs.images
    else:
        arrays["encoding"] = np.array("jpeg")
        lengths = np.fromiter((len(b) for b in pairs.images), dtype=np.int64, count=len(pairs.images))
        arrays["jpeg_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays["jpeg_data"] = np.frombuffer(b"".join(pairs.images), dtype=np.uint8)
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return path


def read_pairs_npz(path: str | Path) -> PairSet:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        fmt = str(z["format"]) if "format" in z else None
        if fmt != PAIRS_FORMAT:
            raise ValueError(f"{path}: format is {fmt!r}, expected {PAIRS_FORMAT!r}")
        version = int(z["version"])
        if version != PAIRS_VERSION:
            raise ValueError(f"{path}: pairs format version {version} is not supported, expected {PAIRS_VERSION}")
        encoding = str(z["encoding"])
        issame = z["issame"].astype(np.bool_)
        images: list[bytes] | np.ndarray
        if encoding == "jpeg":
            data, offsets = z["jpeg_data"], z["jpeg_offsets"]
            if len(offsets) != 2 * len(issame) + 1 or offsets[-1] != len(data):
                raise ValueError(f"{path}: jpeg_offsets do not match jpeg_data and issame (file damaged?)")
            raw = data.tobytes()
            images = [raw[offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)]
        elif encoding == "raw":
            images = z["pixels"]
        else:
            raise ValueError(f"{path}: encoding {encoding!r} unknown, expected 'jpeg' or 'raw'")
        return PairSet(name=str(z["name"]), images=images, issame=issame, meta=json.loads(str(z["meta"])))
