"""The raw-pixel verification baseline: how well pairs verify with no model at all.

Each image is flattened to RGB floats, centred and L2-normalised; a pair's score is the cosine
of its two images. Accuracy is the one k-fold protocol of every evaluation
(``partial_fc.metrics.verification``: 10 contiguous folds, InsightFace's threshold grid), so this
figure and a network's verification accuracy can be compared directly.
"""

from __future__ import annotations

import numpy as np

from partial_fc.data.formats.pairs import PairSet
from partial_fc.metrics.verification import VerificationResult, verify_scores


def pixel_pair_scores(pairs: PairSet, *, chunk: int = 256) -> np.ndarray:
    """(N,) cosine similarity of the raw pixels of each pair (images must share one size)."""
    scores = np.empty(pairs.num_pairs, dtype=np.float64)
    for start in range(0, pairs.num_pairs, chunk):
        stop = min(start + chunk, pairs.num_pairs)
        feats = []
        for k in range(2 * start, 2 * stop):
            x = pairs.image(k).astype(np.float32).reshape(-1)
            x -= x.mean()
            feats.append(x / max(float(np.linalg.norm(x)), 1e-6))
        f = np.stack(feats).reshape(stop - start, 2, -1)
        scores[start:stop] = np.einsum("nd,nd->n", f[:, 0], f[:, 1])
    return scores


def pixel_baseline(pairs: PairSet, *, n_folds: int = 10) -> VerificationResult:
    """k-fold verification accuracy of the raw-pixel cosine of ``pairs``."""
    return verify_scores(pixel_pair_scores(pairs), pairs.issame, n_folds=n_folds)
