"""Where features go in pixels: each image's similarity transform, and equal-sized patches of
the pixel grid gathered at each image's own feature position."""

from __future__ import annotations

import math

import numpy as np

from partial_fc.data.synth.ranges import YAW_SHIFT


def cos_sin(angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Scalar libm per image: numpy's SIMD cos/sin may round differently in vector lanes and
    # the scalar tail, which would make an image depend on its position in the batch.
    return (
        np.array([math.cos(a) for a in angle.tolist()]),
        np.array([math.sin(a) for a in angle.tolist()]),
    )


def per_image(x: np.ndarray | float) -> np.ndarray:
    """(n,) -> (n, 1, 1) float32, to broadcast against (n, H, W)."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


class Patches:
    """Equal-sized rectangles of the pixel grid, each at its own image's feature position.

    Features are then drawn for all images in one set of array passes over small (n, h, w)
    arrays instead of over whole images. Copying the rectangles in and out with a short loop of
    slice copies is several times faster than fancy indexing.
    """

    def __init__(self, which: np.ndarray, row0: np.ndarray, col0: np.ndarray, height: int, width: int) -> None:
        self.which, self.row0, self.col0 = which.tolist(), row0.tolist(), col0.tolist()
        self.height, self.width = height, width

    def _slices(self) -> list[tuple[int, slice, slice]]:
        h, w = self.height, self.width
        return [(b, slice(r, r + h), slice(c, c + w)) for b, r, c in zip(self.which, self.row0, self.col0)]

    def gather(self, a: np.ndarray) -> np.ndarray:
        out = np.empty((len(self.which), self.height, self.width), dtype=a.dtype)
        for k, (b, rows, cols) in enumerate(self._slices()):
            out[k] = a[b, rows, cols]
        return out

    def scatter(self, a: np.ndarray, values: np.ndarray) -> None:
        for k, (b, rows, cols) in enumerate(self._slices()):
            a[b, rows, cols] = values[k]


class Frame:
    """Each image's similarity transform from face coordinates to pixels."""

    def __init__(self, nuis: dict[str, np.ndarray], size: int) -> None:
        self.cos, self.sin = cos_sin(nuis["roll"])
        self.scale, self.tx, self.ty = nuis["scale"], nuis["tx"], nuis["ty"]
        self.yaw_margin = np.abs(nuis["yaw"]) * YAW_SHIFT
        self.size = size

    def patches(
        self, which: np.ndarray, fu: np.ndarray, fv: np.ndarray, half_u: np.ndarray, half_v: np.ndarray
    ) -> Patches:
        """Patches covering the face-coordinate box (fu +- half_u, fv +- half_v) of images `which`
        (all arguments indexed like `which`)."""
        cos, sin, scale = self.cos[which], self.sin[which], self.scale[which]
        x = self.tx[which] + scale * (cos * fu - sin * fv)
        y = self.ty[which] + scale * (sin * fu + cos * fv)
        hu = half_u + self.yaw_margin[which]  # the yaw warp moves features along u only
        hv = half_v
        # The rotated box's axis-aligned half extent, in pixels, plus one for rounding.
        px = scale * (np.abs(cos) * hu + np.abs(sin) * hv) * self.size / 2 + 1
        py = scale * (np.abs(sin) * hu + np.abs(cos) * hv) * self.size / 2 + 1

        def span(centre: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, int]:
            n = min(2 * int(np.ceil(half.max())) + 1, self.size)
            start = np.rint((centre + 1.0) * self.size / 2 - 0.5).astype(np.int64) - n // 2
            return np.clip(start, 0, self.size - n), n

        (row0, height), (col0, width) = span(y, py), span(x, px)
        return Patches(which, row0, col0, height, width)
