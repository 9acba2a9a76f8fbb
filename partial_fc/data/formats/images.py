"""JPEG decoding and encoding: simplejpeg (libjpeg-turbo) first, PIL as the fallback for what
it refuses (CMYK, progressive oddities, PNG and friends)."""

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
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ValueError, RuntimeError):
            pass  # fall through to PIL, which handles CMYK and some damaged files
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises many unrelated types for bad input
        raise CorruptImageError(f"cannot decode {len(data)} bytes as an image: {exc}") from exc


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
