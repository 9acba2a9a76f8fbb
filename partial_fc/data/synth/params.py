"""Identity and nuisance parameters, as named columns of uniform draws in [0, 1).

An identity is a row drawn from (seed, identity id) alone and an image's nuisances a row drawn
from (seed, identity id, image index) alone, so any image can be rendered on its own, in any
order and on any worker, and comes out the same. Ranges live in render.py, next to the drawing
that gives them meaning.
"""

from __future__ import annotations

import numpy as np

from partial_fc.data.seeding import STREAM_IDENTITY, STREAM_IMAGE, rng_for

IDENTITY_FIELDS: tuple[str, ...] = (
    "face_a", "face_b", "jaw_taper", "skin_tone", "skin_r", "skin_g", "skin_b",
    "hair_kind", "hair_r", "hair_g", "hair_b", "hairline", "hairline_curve", "hair_volume",
    "hair_side", "bald",
    "eye_dx", "eye_y", "eye_a", "eye_ratio", "iris_kind", "iris_ratio",
    "brow_gap", "brow_thick", "brow_len", "brow_tilt",
    "nose_len", "nose_w", "nostril",
    "mouth_y", "mouth_w", "lip_thick", "lip_r",
    "beard", "beard_top",
    "mole_n", "mole_u0", "mole_v0", "mole_u1", "mole_v1", "mole_u2", "mole_v2", "mole_r",
    "neck_w",
)  # fmt: skip

IMAGE_FIELDS: tuple[str, ...] = (
    "roll", "yaw", "pitch", "scale", "tx", "ty",
    "mouth_open", "smile", "eye_open", "brow_raise",
    "gain", "cast_r", "cast_g", "cast_b", "grad_x", "grad_y",
    "bg_r", "bg_g", "bg_b",
    "occlude", "occ_x", "occ_y", "occ_w", "occ_h", "occ_r", "occ_g", "occ_b",
    "blur", "noise", "noise_offset", "quality", "face_shade",
)  # fmt: skip

IDENTITY_COLUMN: dict[str, int] = {name: i for i, name in enumerate(IDENTITY_FIELDS)}
IMAGE_COLUMN: dict[str, int] = {name: i for i, name in enumerate(IMAGE_FIELDS)}


def identity_uniforms(seed: int, identity_ids: np.ndarray) -> np.ndarray:
    """(n, len(IDENTITY_FIELDS)) float64 uniforms, row i a function of (seed, identity_ids[i])."""
    return np.stack([rng_for(seed, STREAM_IDENTITY, int(i)).random(len(IDENTITY_FIELDS)) for i in identity_ids])


def image_uniforms(seed: int, identity_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """(n, len(IMAGE_FIELDS)) float64 uniforms, row i a function of (seed, identity, image)."""
    return np.stack(
        [
            rng_for(seed, STREAM_IMAGE, int(i), int(j)).random(len(IMAGE_FIELDS))
            for i, j in zip(identity_ids, image_ids, strict=True)
        ]
    )
