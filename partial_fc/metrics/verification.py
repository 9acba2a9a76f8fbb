"""LFW-style k-fold pair verification accuracy, computed as InsightFace's `evaluate` does.

The pair list is cut into `n_folds` contiguous folds (sklearn `KFold(shuffle=False)` boundaries);
for each fold the threshold with the best accuracy on the other folds is applied to it. InsightFace
thresholds the squared distance d² of unit embeddings on the grid 0, 0.01, ..., 3.99 and calls a
pair "same" when d² < t. For unit vectors d² = 2 − 2·cos, so that test is cos > 1 − t/2: this module
works in cosine with the grid 1, 0.995, ..., −0.995 and keeps InsightFace's tie-break (the first
best grid entry, i.e. the strictest threshold). Results agree with InsightFace up to pairs whose
score lies within float rounding of a grid value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from partial_fc.metrics.inputs import as_embeddings, as_same_labels, as_scores, l2_normalize


def insightface_cosine_thresholds() -> np.ndarray:
    """InsightFace's distance grid np.arange(0, 4, 0.01) mapped to cosine: 1 − d²/2, descending."""
    return 1.0 - np.arange(0.0, 4.0, 0.01) / 2.0


@dataclass(frozen=True)
class VerificationResult:
    accuracy_mean: float
    accuracy_std: float  # population std (ddof=0) over folds, as InsightFace reports it
    best_threshold_mean: float  # mean over folds of the cosine threshold chosen on the others
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    n_pairs: int
    n_folds: int


def flip_sum_normalize(embeddings: ArrayLike, flipped: ArrayLike | None = None) -> np.ndarray:
    """Unit-norm rows of ``embeddings`` (+ the embeddings of the horizontally flipped images), float64.

    The sum is taken before normalising, as InsightFace does, so the longer (more confident) of
    the two embeddings weighs more. Without ``flipped`` the rows are only normalised. This is the
    one normalise-and-flip step of every evaluation (pairs, gallery/probe, ``embed``, training).
    """
    a = as_embeddings(embeddings, name="embeddings")
    if flipped is None:
        return l2_normalize(a, name="embeddings")
    b = as_embeddings(flipped, name="flipped")
    if a.shape != b.shape:
        raise ValueError(f"flipped must have the shape of embeddings {a.shape}, got {b.shape}")
    return l2_normalize(a.astype(np.float64) + b, name="embeddings + flipped")


def pair_cosine(embeddings1: ArrayLike, embeddings2: ArrayLike) -> np.ndarray:
    """Cosine similarity of row i of `embeddings1` with row i of `embeddings2`, shape (n,)."""
    a = l2_normalize(embeddings1, name="embeddings1")
    b = l2_normalize(embeddings2, name="embeddings2")
    if a.shape != b.shape:
        raise ValueError(f"embeddings2 must have the shape of embeddings1 {a.shape}, got {b.shape}")
    return np.einsum("ij,ij->i", a, b)


def kfold_bounds(n_items: int, *, n_folds: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) of each contiguous fold: the first n_items % n_folds folds get one extra item
    (sklearn KFold without shuffling). One fold means train on and test on everything (LFold)."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if n_items < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} pairs, got {n_items}")
    size, extra = divmod(n_items, n_folds)
    bounds, start = [], 0
    for k in range(n_folds):
        stop = start + size + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return tuple(bounds)


def accuracy_per_threshold(
    scores: np.ndarray, is_same: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Accuracy of "same iff score > t" for every t, exact from counts, O((n + T) log n)."""
    same = np.sort(scores[is_same])
    diff = np.sort(scores[~is_same])
    true_accepts = same.size - np.searchsorted(same, thresholds, side="right")
    true_rejects = np.searchsorted(diff, thresholds, side="right")
    return (true_accepts + true_rejects) / scores.size


def verify_scores(
    scores: ArrayLike,
    is_same: ArrayLike,
    *,
    n_folds: int = 10,
    thresholds: ArrayLike | None = None,
) -> VerificationResult:
    """k-fold accuracy of cosine `scores` (n,) against same/different `is_same` (n,).

    `thresholds` is the cosine grid searched on each fold's training part, in tie-break order
    (the first best entry wins); default `insightface_cosine_thresholds()`.
    """
    s = as_scores(scores, name="scores")
    y = as_same_labels(is_same, name="is_same", n=s.size)
    grid = insightface_cosine_thresholds() if thresholds is None else np.asarray(thresholds, float)
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"thresholds must be a non-empty finite 1-D array, got {grid!r}")
    accuracies, chosen = [], []
    for start, stop in kfold_bounds(s.size, n_folds=n_folds):
        test = np.zeros(s.size, dtype=bool)
        test[start:stop] = True
        train = ~test if n_folds > 1 else test
        best = grid[int(np.argmax(accuracy_per_threshold(s[train], y[train], grid)))]
        chosen.append(float(best))
        accuracies.append(float(accuracy_per_threshold(s[test], y[test], np.array([best]))[0]))
    return VerificationResult(
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        best_threshold_mean=float(np.mean(chosen)),
        fold_accuracies=tuple(accuracies),
        fold_thresholds=tuple(chosen),
        n_pairs=int(s.size),
        n_folds=n_folds,
    )


def verify_pairs(
    embeddings1: ArrayLike,
    embeddings2: ArrayLike,
    is_same: ArrayLike,
    *,
    n_folds: int = 10,
    thresholds: ArrayLike | None = None,
) -> VerificationResult:
    """k-fold accuracy of pairs (embeddings1[i], embeddings2[i]), each (n, dim), by cosine."""
    return verify_scores(
        pair_cosine(embeddings1, embeddings2), is_same, n_folds=n_folds, thresholds=thresholds
    )


def verify_interleaved(
    embeddings: ArrayLike,
    is_same: ArrayLike,
    *,
    flipped: ArrayLike | None = None,
    n_folds: int = 10,
    thresholds: ArrayLike | None = None,
) -> VerificationResult:
    """The InsightFace `.bin` layout: rows 2i and 2i+1 of `embeddings` (2n, dim) are pair i.

    With `flipped` (embeddings of the mirrored images, same layout) each row is replaced by the
    normalised flip sum first, as InsightFace's "Accuracy-Flip" does.
    """
    emb = as_embeddings(embeddings, name="embeddings")
    if emb.shape[0] % 2:
        raise ValueError(f"embeddings must have an even number of rows (pairs), got {emb.shape[0]}")
    if flipped is not None:
        emb = flip_sum_normalize(emb, flipped)
    return verify_pairs(emb[0::2], emb[1::2], is_same, n_folds=n_folds, thresholds=thresholds)
