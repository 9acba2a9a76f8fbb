"""Blur nuisances on float (b, H, W, C) images: binomial kernels and a low-resolution camera."""

from __future__ import annotations

import numpy as np

# Blur levels by the uniform 'blur': none below 0.5, binomial 3-tap (sigma ~0.7 px), 3-tap twice
# (5-tap, sigma 1 px), half resolution then 3-tap (a low-resolution camera).
BLUR_EDGES = np.array([0.5, 0.75, 0.9])


def blur3(img: np.ndarray, axis: int) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 along axis 1 or 2 of (b, H, W, C), edges replicated. Plain slices
    along the axis (no moveaxis) keep the inner loops contiguous."""

    def at(start: int | None, stop: int | None) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    out = np.empty_like(img)
    inner = out[at(1, -1)]
    np.add(img[at(None, -2)], img[at(2, None)], out=inner)
    inner *= 0.25
    inner += 0.5 * img[at(1, -1)]
    out[at(0, 1)] = 0.75 * img[at(0, 1)] + 0.25 * img[at(1, 2)]
    out[at(-1, None)] = 0.75 * img[at(-1, None)] + 0.25 * img[at(-2, -1)]
    return out


def blur(img: np.ndarray, level: int) -> np.ndarray:
    """img: (b, H, W, C) float32."""
    if level == 3:  # half resolution: average 2x2 blocks and repeat them
        img = img.copy()
        h2, w2 = img.shape[1] // 2 * 2, img.shape[2] // 2 * 2
        even = img[:, :h2, :w2]
        block = even[:, 0::2, 0::2] + even[:, 1::2, 0::2] + even[:, 0::2, 1::2] + even[:, 1::2, 1::2]
        block *= 0.25
        for dr in (0, 1):
            for dc in (0, 1):
                even[:, dr::2, dc::2] = block
    for _ in range(2 if level == 2 else 1):
        img = blur3(blur3(img, 1), 2)
    return img
