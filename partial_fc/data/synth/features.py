"""The features painted into a face's region-index map, each for the whole batch at once.

Features are drawn into patches gathered at each image's own position (frame.py): eyes and
brows (one pass for both sides through |u|), the nose with its shadowed flank, the mouth with
smile and opening, moles, and occluding blocks.
"""

from __future__ import annotations

import numpy as np

from partial_fc.data.synth import palette as pal
from partial_fc.data.synth.frame import Frame, per_image
from partial_fc.data.synth.ranges import OCCLUSION_PROBABILITY


def draw_moles(idx: np.ndarray, u: np.ndarray, v: np.ndarray, ident: dict[str, np.ndarray], frame: Frame) -> None:
    # 0-3 small dark spots per identity, on skin only (slot k exists when mole_n * 4 > k).
    count = (ident["mole_n"] * 4).astype(np.int64)
    for k in range(3):
        which = np.flatnonzero(count > k)
        if not len(which):
            continue
        fu, fv, radius = ident[f"mole_u{k}"][which], ident[f"mole_v{k}"][which], ident["mole_r"][which]
        patch = frame.patches(which, fu, fv, radius, radius)
        du, dv = patch.gather(u) - per_image(fu), patch.gather(v) - per_image(fv)
        win = patch.gather(idx)
        np.copyto(win, pal.MOLE, where=(du * du + dv * dv < per_image(radius**2)) & (win == pal.SKIN))
        patch.scatter(idx, win)


def draw_eyes_and_brows(
    idx: np.ndarray, u: np.ndarray, v: np.ndarray, ident: dict[str, np.ndarray], nuis: dict[str, np.ndarray], frame: Frame
) -> None:
    eye_y = ident["eye_y"] + nuis["pitch"]
    brow_y = eye_y - ident["brow_gap"] - nuis["brow_raise"]
    half_u = ident["eye_dx"] + np.maximum(ident["eye_a"], ident["brow_len"])
    tilt_rise = np.abs(ident["brow_tilt"]) * ident["brow_len"]
    half_v = (eye_y - brow_y) / 2 + np.maximum(ident["eye_a"], ident["brow_thick"] + tilt_rise)
    patch = frame.patches(np.arange(len(eye_y)), np.zeros_like(eye_y), (eye_y + brow_y) / 2, half_u, half_v)
    uw, vw, win = patch.gather(u), patch.gather(v), patch.gather(idx)
    # |u| draws both eyes (and both brows) with one set of array passes.
    au = np.abs(uw) - per_image(ident["eye_dx"])
    au2 = au * au
    bv = vw - per_image(brow_y) - per_image(ident["brow_tilt"]) * au
    np.copyto(win, pal.BROW, where=au2 / per_image(ident["brow_len"] ** 2) + bv * bv / per_image(ident["brow_thick"] ** 2) < 1.0)
    ev = vw - per_image(eye_y)
    ev2 = ev * ev
    eye_b = ident["eye_a"] * ident["eye_ratio"] * nuis["eye_open"]
    sclera = au2 / per_image(ident["eye_a"] ** 2) + ev2 / per_image(eye_b**2) < 1.0
    iris_r = ident["eye_a"] * ident["iris_ratio"] * 0.8
    d2 = au2 + ev2
    np.copyto(win, pal.SCLERA, where=sclera)
    np.copyto(win, pal.IRIS, where=sclera & (d2 < per_image(iris_r**2)))
    np.copyto(win, pal.PUPIL, where=sclera & (d2 < per_image((0.45 * iris_r) ** 2)))
    patch.scatter(idx, win)


def draw_nose(
    idx: np.ndarray, u: np.ndarray, v: np.ndarray, ident: dict[str, np.ndarray], nuis: dict[str, np.ndarray], frame: Frame
) -> None:
    top = ident["eye_y"] + 0.05 + nuis["pitch"]
    length, width = ident["nose_len"], ident["nose_w"]
    half_u = np.maximum(width, 0.6 * width + ident["nostril"])  # flank tip, or the nostrils
    patch = frame.patches(np.arange(len(top)), np.zeros_like(top), top + length / 2, half_u, length / 2 + ident["nostril"])
    uw, vw, win = patch.gather(u), patch.gather(v), patch.gather(idx)
    t = (vw - per_image(top)) / per_image(length)
    # The shadowed flank faces away from the light, so its side follows the light's direction.
    us = uw * per_image(np.where(nuis["grad_x"] >= 0, -1.0, 1.0))
    np.copyto(win, pal.NOSE, where=(t > 0) & (t < 1) & (us > 0) & (us < per_image(width) * (0.2 + 0.8 * t)))
    nu = np.abs(uw) - per_image(0.6 * width)
    nv = (vw - per_image(top + length)) * 1.7
    np.copyto(win, pal.NOSTRIL, where=nu * nu + nv * nv < per_image(ident["nostril"] ** 2))
    patch.scatter(idx, win)


def draw_mouth(
    idx: np.ndarray, u: np.ndarray, v: np.ndarray, ident: dict[str, np.ndarray], nuis: dict[str, np.ndarray], frame: Frame
) -> None:
    y0 = ident["mouth_y"] + nuis["pitch"]
    half_w, smile = ident["mouth_w"], nuis["smile"]
    opening = np.maximum(nuis["mouth_open"], 0.0) * ident["lip_thick"] * 1.8
    outer_r = ident["lip_thick"] + opening / 2
    lift = smile * half_w**2  # smile > 0 lifts the corners by this much
    centre = y0 - lift / 2
    patch = frame.patches(np.arange(len(y0)), np.zeros_like(y0), centre, half_w, outer_r + np.abs(lift) / 2)
    uw, vw, win = patch.gather(u), patch.gather(v), patch.gather(idx)
    mu2 = (uw / per_image(half_w)) ** 2
    mv = vw - per_image(y0) + per_image(smile) * uw * uw
    np.copyto(win, pal.LIPS, where=mu2 + (mv / per_image(outer_r)) ** 2 < 1.0)
    np.copyto(win, pal.MOUTH, where=1.25 * mu2 + (mv / per_image(np.maximum(opening / 2, 1e-4))) ** 2 < 1.0)
    patch.scatter(idx, win)


def draw_occluders(idx: np.ndarray, nuis: dict[str, np.ndarray], size: int) -> None:
    # A hand, a microphone, a scarf: an axis-aligned block in image coordinates over some faces.
    def px(x: float) -> int:
        return int(min(max(round((x + 1.0) * size / 2.0), 0), size))

    for i in np.flatnonzero(nuis["occlude"] < OCCLUSION_PROBABILITY):
        x, y, w, h = nuis["occ_x"][i], nuis["occ_y"][i], nuis["occ_w"][i], nuis["occ_h"][i]
        idx[i, px(y - h / 2) : px(y + h / 2), px(x - w / 2) : px(x + w / 2)] = pal.OCCLUDER
