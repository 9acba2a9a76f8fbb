"""JPEG decoding and encoding: simplejpeg (libjpeg-turbo) first, PIL as the fallback for what
it refuses (PNG and friends, JPEG features libjpeg-turbo cannot decode).

A libjpeg *warning* ("Corrupt JPEG data: premature end of data segment", "Premature end of JPEG
file", "N extraneous bytes before marker") means damaged data: libjpeg fills the rest of the
image with grey or garbage and carries on, and so does PIL, which ignores the warnings. Such a
JPEG is corrupt here, never handed to PIL. Damage that leaves a valid entropy-coded stream (a
flipped bit inside a Huffman code that still decodes) gives no warning: no decoder can see it,
JPEG has no checksum.
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

JPEG_SOI = b"\xff\xd8"


class CorruptImageError(ValueError):
    """Raised when bytes cannot be decoded as an image by either decoder."""


def is_jpeg(data: bytes) -> bool:
    return data[:2] == JPEG_SOI


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array.

    Raises CorruptImageError (never anything else) when neither decoder can read the bytes.
    """
    if is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")  # strict: warnings raise
        except (ValueError, RuntimeError) as strict_error:
            if _decodes_leniently(data):  # only a warning stopped it: the data is damaged
                raise CorruptImageError(f"damaged JPEG ({len(data)} bytes): {strict_error}") from None
            # a fatal libjpeg error: maybe a JPEG variant PIL reads; PIL decides below
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises many unrelated types for bad input
        raise CorruptImageError(f"cannot decode {len(data)} bytes as an image: {exc}") from exc


def _decodes_leniently(data: bytes) -> bool:
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
    except (ValueError, RuntimeError):
        return False
    return True


def encode_jpeg(image: np.ndarray, *, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as baseline JPEG with 4:2:0 chroma subsampling."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB", colorsubsampling="420")


def as_jpeg(data: bytes, *, quality: int = 95) -> bytes:
    """Return JPEG bytes for any image PIL reads: JPEG input is checked and kept as is (no
    generation loss), anything else is decoded and re-encoded.

    Raises CorruptImageError when the bytes are not a readable image.
    """
    if is_jpeg(data):
        try:
            simplejpeg.decode_jpeg_header(data)
            return data
        except (ValueError, RuntimeError):
            pass  # maybe a JPEG libjpeg-turbo's header parser rejects; let PIL decide below
    return encode_jpeg(decode_rgb(data), quality=quality)
