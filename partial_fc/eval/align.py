"""Five-point face alignment to the ArcFace 112 x 112 template (InsightFace ``norm_crop``).

A similarity transform (rotation, uniform scale, translation; no reflection) maps the five
landmarks onto the template in the least-squares sense (Umeyama 1991, as skimage's
``SimilarityTransform.estimate`` computes it); the image is warped with it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Left eye, right eye, nose tip, left and right mouth corner in a 112 x 112 crop.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 matrix A with dst ≈ A @ [src, 1] (least squares over similarity transforms)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / src.shape[0]
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    return np.c_[scale * rot, mu_d - scale * rot @ mu_s]


def align_face(image: np.ndarray, landmarks: np.ndarray, *, size: int = 112) -> np.ndarray:
    """(size, size, 3) uint8 crop of ``image`` (H, W, 3) with ``landmarks`` (5, 2) in pixels."""
    forward = similarity_transform(landmarks, ARCFACE_TEMPLATE_112 * (size / 112.0))
    inverse = np.linalg.inv(np.r_[forward, [[0.0, 0.0, 1.0]]])[:2]  # PIL maps output -> input pixels
    warped = Image.fromarray(image).transform((size, size), Image.AFFINE, data=tuple(inverse.ravel()),
                                              resample=Image.BILINEAR)
    return np.asarray(warped)
