"""Validation of the arrays every metric takes: embeddings, scores, same/different labels.

Each check names the argument and the offending value, so a bad evaluation input is an error
that says what is wrong instead of a plausible-looking accuracy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def as_embeddings(x: ArrayLike, *, name: str) -> np.ndarray:
    """Return `x` as a finite (n, d) floating array (float32 stays float32, ints become float64)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, dim) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite, got {arr[row, col]} at row {row}, column {col}")
    return arr


def l2_normalize(x: ArrayLike, *, name: str) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm, in float64.

    A zero row has no direction, so it is an error (sklearn's `normalize`, which InsightFace
    uses, would silently keep it as zeros and give it cosine 0 with everything).
    """
    arr = as_embeddings(x, name=name).astype(np.float64)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    if zero.size:
        raise ValueError(f"{name} row {zero[0]} has zero L2 norm; cannot normalise it")
    return arr / norms


def as_scores(x: ArrayLike, *, name: str) -> np.ndarray:
    """Return `x` as a finite 1-D float64 array with at least one entry."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must be finite, got {arr[bad[0]]} at index {bad[0]}")
    return arr


def as_same_labels(x: ArrayLike, *, name: str, n: int) -> np.ndarray:
    """Return same(1/True)/different(0/False) labels as a bool array of length `n`."""
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be bool or 0/1, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        raise ValueError(f"{name} must be 0/1 (different/same), got {arr[bad[0]]} at index {bad[0]}")
    return arr == 1


def as_rate_targets(x: ArrayLike, *, name: str) -> tuple[float, ...]:
    """False-accept-rate targets: a non-empty sequence of floats in (0, 1]."""
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    for v in arr:
        if not (0.0 < v <= 1.0):
            raise ValueError(f"{name} entries must be in (0, 1], got {v}")
    return tuple(float(v) for v in arr)
