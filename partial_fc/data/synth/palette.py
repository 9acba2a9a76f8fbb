"""The regions a synthetic face is painted with and their colours, per image.

A face is first drawn as a map of region indices; a per-image (16, 3) palette then colours it.
Illumination gain and colour cast are folded into the palette, so they cost nothing per pixel.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, SKIN, HAIR, NECK, SCLERA, IRIS, PUPIL, BROW = 0, 1, 2, 3, 4, 5, 6, 7
NOSE, LIPS, MOUTH, MOLE, BEARD, OCCLUDER, NOSTRIL = 8, 9, 10, 11, 12, 13, 14
NUM_REGIONS = 16

_SKIN_LIGHT = np.array([236.0, 200.0, 172.0])
_SKIN_DARK = np.array([88.0, 58.0, 44.0])
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 170, 110], [150, 70, 35], [165, 160, 155], [60, 60, 70]],
    dtype=np.float64,
)  # black, dark brown, brown, blond, red, grey, blue-black
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [70, 110, 160], [85, 125, 80], [120, 125, 130]], dtype=np.float64)


def _pick(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    return table[np.minimum((u * len(table)).astype(np.int64), len(table) - 1)]


def build_palette(ident: dict[str, np.ndarray], nuis: dict[str, np.ndarray]) -> np.ndarray:
    """(B, NUM_REGIONS, 3) float32 colours in [0, 255] before shading, from parameter columns
    already mapped to their ranges (see render.py)."""
    batch = len(ident["skin_tone"])
    pal = np.zeros((batch, NUM_REGIONS, 3), dtype=np.float64)
    jitter = np.stack([ident["skin_r"], ident["skin_g"], ident["skin_b"]], axis=1)
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * ident["skin_tone"][:, None] + jitter
    hair = _pick(_HAIR, ident["hair_kind"]) + np.stack([ident["hair_r"], ident["hair_g"], ident["hair_b"]], axis=1)
    pal[:, BACKGROUND] = np.stack([nuis["bg_r"], nuis["bg_g"], nuis["bg_b"]], axis=1)
    pal[:, SKIN] = skin
    pal[:, HAIR] = hair
    pal[:, NECK] = skin * 0.82
    pal[:, SCLERA] = [232.0, 230.0, 222.0]
    pal[:, IRIS] = _pick(_IRIS, ident["iris_kind"])
    pal[:, PUPIL] = [18.0, 16.0, 16.0]
    pal[:, BROW] = hair * 0.65
    pal[:, NOSE] = skin * 0.78
    pal[:, LIPS] = skin * np.array([0.86, 0.55, 0.55]) + ident["lip_r"][:, None] * np.array([1.0, 0.2, 0.2])
    pal[:, MOUTH] = [62.0, 22.0, 26.0]
    pal[:, MOLE] = skin * 0.45
    pal[:, BEARD] = hair * 0.8 + skin * 0.1
    pal[:, OCCLUDER] = np.stack([nuis["occ_r"], nuis["occ_g"], nuis["occ_b"]], axis=1)
    pal[:, NOSTRIL] = skin * 0.4
    cast = np.stack([nuis["cast_r"], nuis["cast_g"], nuis["cast_b"]], axis=1)
    pal[:, 1:] *= (nuis["gain"][:, None] * cast)[:, None, :]  # the background is not lit by the face's light
    return np.clip(pal, 0.0, 255.0).astype(np.float32)
