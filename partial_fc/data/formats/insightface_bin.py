"""InsightFace verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), read safely.

A .bin is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N images in pair order, each
JPEG bytes (Python 2 str, read as bytes) or a uint8 array: a 1-D array of encoded bytes, or a
decoded (H, W, 3) / (3, H, W) image. It is read with the restricted unpickler, so a malicious
file fails with an error naming the global it reached for instead of running it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partial_fc.data.formats.images import CorruptImageError, as_jpeg, decode_rgb, is_jpeg
from partial_fc.data.formats.pairs import PairSet
from partial_fc.data.formats.safe_unpickle import UnsafePickleError, restricted_load


def _element(item: object, k: int, path: Path) -> bytes | np.ndarray:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        if item.ndim == 1:
            return item.tobytes()
        if item.ndim == 3 and item.shape[-1] == 3:
            return np.ascontiguousarray(item)
        if item.ndim == 3 and item.shape[0] == 3:
            return np.ascontiguousarray(item.transpose(1, 2, 0))
    what = f"{type(item).__name__}" + (f" {item.dtype} {item.shape}" if isinstance(item, np.ndarray) else "")
    raise ValueError(f"{path}: image {k} is {what}; expected bytes or a uint8 array (encoded, HWC or CHW)")


def _unpickle(path: Path) -> object:
    """The pickled object, or a ValueError naming ``path`` and what is wrong with the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return restricted_load(f, encoding="bytes")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except MemoryError:
        raise
    except Exception as err:  # the unpickler raises many types on junk; all mean "not a .bin"
        if size == 0:
            raise ValueError(f"{path} is empty (0 bytes); expected a pickled InsightFace verification set") from None
        truncated = isinstance(err, EOFError) or "truncated" in str(err)
        what = f"ends early after {size} bytes (truncated?)" if truncated else "is not a pickle"
        detail = " ".join(str(err).split())  # some unpickler messages span lines
        raise ValueError(f"{path} {what}: {type(err).__name__}: {detail}; expected a pickled (bins, issame_list) pair "
                         "as InsightFace writes them") from None


def check_decodes(pairs: PairSet, path: str | Path) -> None:
    """Decode every encoded image of ``pairs`` (read from ``path``) and raise a ValueError naming
    the file and the first image that does not decode. A converter calls it so that a damaged
    set fails at conversion, not at the first evaluation."""
    if isinstance(pairs.images, np.ndarray):
        return  # raw pixels: nothing to decode
    for k, data in enumerate(pairs.images):
        try:
            decode_rgb(data)
        except CorruptImageError as err:
            raise ValueError(f"{path}: image {k} (pair {k // 2}) does not decode: {err}") from None


def read_insightface_bin(path: str | Path) -> PairSet:
    path = Path(path)
    loaded = _unpickle(path)
    if not (isinstance(loaded, tuple | list) and len(loaded) == 2):
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(loaded).__name__}")
    bins, issame_list = loaded
    issame = np.array([bool(x) for x in issame_list], dtype=np.bool_)
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs, expected {2 * len(issame)}")
    elements = [_element(item, k, path) for k, item in enumerate(bins)]
    meta = {"source": "insightface-bin", "file": path.name}
    if all(isinstance(e, bytes) for e in elements):
        # Non-JPEG encodings (PNG) are re-encoded so the pair file holds only JPEG.
        images: list[bytes] | np.ndarray = [e if is_jpeg(e) else as_jpeg(e) for e in elements]  # type: ignore[arg-type]
    else:
        arrays = [e if isinstance(e, np.ndarray) else decode_rgb(e) for e in elements]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"{path}: decoded images have different shapes {sorted(shapes)[:4]}; cannot store them raw")
        images = np.stack(arrays)
    return PairSet(name=path.stem, images=images, issame=issame, meta=meta)
