"""What a synthetic face is made of: the range of every identity parameter and nuisance.

Face coordinates are the aligned-crop frame: x right and y down, [-1, 1] across the image at
scale 1. Each parameter is a uniform draw in [0, 1) (params.py) mapped linearly to its range.
"""

from __future__ import annotations

import numpy as np

# Identity parameters: what stays fixed across a person's images (face coordinates: the
# aligned-crop frame, x right and y down in [-1, 1] at scale 1).
IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_a": (0.64, 0.86), "face_b": (0.90, 1.10), "jaw_taper": (0.0, 0.45),
    "skin_tone": (0.0, 1.0), "skin_r": (-14.0, 14.0), "skin_g": (-14.0, 14.0), "skin_b": (-14.0, 14.0),
    "hair_kind": (0.0, 1.0), "hair_r": (-18.0, 18.0), "hair_g": (-18.0, 18.0), "hair_b": (-18.0, 18.0),
    "hairline": (-0.85, -0.45), "hairline_curve": (-0.5, 0.6), "hair_volume": (1.04, 1.28),
    "hair_side": (-0.3, 0.7), "bald": (0.0, 1.0),
    "eye_dx": (0.23, 0.35), "eye_y": (-0.24, -0.06), "eye_a": (0.085, 0.13), "eye_ratio": (0.36, 0.62),
    "iris_kind": (0.0, 1.0), "iris_ratio": (0.45, 0.72),
    "brow_gap": (0.10, 0.19), "brow_thick": (0.02, 0.05), "brow_len": (0.10, 0.18), "brow_tilt": (-0.4, 0.4),
    "nose_len": (0.24, 0.42), "nose_w": (0.05, 0.11), "nostril": (0.02, 0.04),
    "mouth_y": (0.42, 0.60), "mouth_w": (0.14, 0.26), "lip_thick": (0.028, 0.06), "lip_r": (-10.0, 30.0),
    "beard": (0.0, 1.0), "beard_top": (0.0, 1.0),
    "mole_n": (0.0, 1.0), "mole_u0": (-0.55, 0.55), "mole_v0": (-0.5, 0.7), "mole_u1": (-0.55, 0.55),
    "mole_v1": (-0.5, 0.7), "mole_u2": (-0.55, 0.55), "mole_v2": (-0.5, 0.7), "mole_r": (0.018, 0.035),
    "neck_w": (0.28, 0.45),
}  # fmt: skip

# Nuisances: what changes from one image of a person to the next. Strong on purpose, so that
# raw pixels verify poorly and a model has to learn the identity.
IMAGE_RANGES: dict[str, tuple[float, float]] = {
    "roll": (-0.38, 0.38), "yaw": (-0.6, 0.6), "pitch": (-0.07, 0.07), "scale": (0.80, 1.14),
    "tx": (-0.10, 0.10), "ty": (-0.10, 0.10),
    "mouth_open": (-1.0, 1.0), "smile": (-0.8, 1.6), "eye_open": (0.1, 1.15), "brow_raise": (-0.02, 0.06),
    "gain": (0.5, 1.3), "cast_r": (0.82, 1.18), "cast_g": (0.82, 1.18), "cast_b": (0.82, 1.18),
    "grad_x": (-0.55, 0.55), "grad_y": (-0.4, 0.4),
    "bg_r": (10.0, 245.0), "bg_g": (10.0, 245.0), "bg_b": (10.0, 245.0),
    "occlude": (0.0, 1.0), "occ_x": (-0.7, 0.7), "occ_y": (-0.6, 0.8), "occ_w": (0.2, 0.8),
    "occ_h": (0.1, 0.45), "occ_r": (0.0, 255.0), "occ_g": (0.0, 255.0), "occ_b": (0.0, 255.0),
    "blur": (0.0, 1.0), "noise": (0.0, 1.0), "noise_offset": (0.0, 1.0), "quality": (70.0, 96.0),
    "face_shade": (0.1, 0.45),
}  # fmt: skip

OCCLUSION_PROBABILITY = 0.35
BEARD_PROBABILITY = 0.25
BALD_PROBABILITY = 0.1
NOISE_MAX_SIGMA = 14.0  # in 0..255 units; drawn as max * u^2 so most images are mildly noisy
YAW_SHIFT = 0.35  # how far (face units) the yaw warp moves the centre of the face per unit yaw
FACE_CENTER_Y = 0.08


def columns(
    u: np.ndarray, column_of: dict[str, int], ranges: dict[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Named parameter arrays (n,) from (n, fields) uniforms."""
    return {name: lo + (hi - lo) * u[:, column_of[name]] for name, (lo, hi) in ranges.items()}
