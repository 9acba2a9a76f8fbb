"""The raw-pixel verification baseline: how well pairs verify with no model at all.

Each image is flattened to RGB floats, centred and L2-normalised; a pair's score is the cosine
of its two images. Accuracy is the LFW protocol: 10 folds, the threshold chosen on 9 and
applied to the tenth, mean over folds.
"""

from __future__ import annotations

import numpy as np

from partial_fc.data.formats.pairs import PairSet


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


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, *, folds: int = 10) -> tuple[float, float]:
    """(mean, std) accuracy over folds of thresholding ``scores`` (higher = same), each fold's
    threshold the best on the other folds. Pairs are split into contiguous folds, as in LFW."""
    n = len(scores)
    if n < folds:
        raise ValueError(f"need at least {folds} pairs for {folds}-fold accuracy, got {n}")
    bounds = np.linspace(0, n, folds + 1).astype(int)
    accs = []
    for f in range(folds):
        test = np.zeros(n, dtype=bool)
        test[bounds[f] : bounds[f + 1]] = True
        train_s, train_y = scores[~test], issame[~test]
        # Best threshold on the training folds: cut i predicts "same" for the i-th smallest
        # score and above; correct = negatives below the cut + positives at or above it.
        order = np.argsort(train_s)
        s, y = train_s[order], train_y[order]
        neg_below = np.concatenate([[0], np.cumsum(~y)])
        pos_below = np.concatenate([[0], np.cumsum(y)])
        cut = int(np.argmax(neg_below + (pos_below[-1] - pos_below)))
        edges = np.concatenate([[s[0] - 1.0], s, [s[-1] + 1.0]])
        threshold = (edges[cut] + edges[cut + 1]) / 2
        accs.append(float(np.mean((scores[test] > threshold) == issame[test])))
    return float(np.mean(accs)), float(np.std(accs))
