"""k-fold verification accuracy against a hand-worked case, sklearn KFold and a transcription of
InsightFace's squared-distance loop."""

from __future__ import annotations

import numpy as np
import pytest

from partial_fc.metrics.verification import (
    flip_sum_normalize,
    insightface_cosine_thresholds,
    kfold_bounds,
    pair_cosine,
    verify_interleaved,
    verify_pairs,
    verify_scores,
)


@pytest.mark.parametrize(("n", "k"), [(6000, 10), (23, 10), (10, 10), (7, 3), (101, 7)])
def test_fold_bounds_match_sklearn_kfold(n: int, k: int) -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    expected = [
        (int(test[0]), int(test[-1]) + 1)
        for _, test in model_selection.KFold(n_splits=k, shuffle=False).split(np.arange(n))
    ]
    assert list(kfold_bounds(n, n_folds=k)) == expected


def test_ten_fold_hand_case_with_known_thresholds() -> None:
    # 20 pairs, fold k = pairs 2k (same) and 2k+1 (different). Same pairs score 0.6, different 0.2,
    # except fold 3 whose same pair scores 0.3. Grid, in tie-break order: 0.9, 0.5, 0.25, 0.1.
    # Folds != 3 train on 18 pairs including the 0.3: t=0.25 gets all 18 right, t=0.5 17 -> 0.25,
    #   which gets the test fold right: accuracy 1.
    # Fold 3 trains without the 0.3: 0.5 and 0.25 both get 18/18; the first, 0.5, wins the tie
    #   and rejects the 0.3 same pair: accuracy 1/2.
    # Mean accuracy (9 * 1 + 0.5) / 10 = 0.95; population std sqrt((9 * 0.05² + 0.45²) / 10) = 0.15;
    # mean threshold (9 * 0.25 + 0.5) / 10 = 0.275.
    scores = np.tile([0.6, 0.2], 10)
    scores[6] = 0.3
    labels = np.tile([True, False], 10)
    r = verify_scores(scores, labels, n_folds=10, thresholds=[0.9, 0.5, 0.25, 0.1])
    assert r.fold_thresholds == (0.25, 0.25, 0.25, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25)
    assert r.fold_accuracies == (1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    # Means of ten short decimals: 1e-12 is float summation noise.
    assert r.accuracy_mean == pytest.approx(0.95, abs=1e-12)
    assert r.accuracy_std == pytest.approx(0.15, abs=1e-12)
    assert r.best_threshold_mean == pytest.approx(0.275, abs=1e-12)


def test_a_score_equal_to_the_threshold_is_rejected() -> None:
    # InsightFace predicts same iff d² < t (strict), i.e. cos > 1 - t/2: a same pair scoring
    # exactly the threshold 0.5 is rejected. One fold trains and tests on both pairs: accuracy 1/2
    # (a ">=" rule would accept it and score 1).
    r = verify_scores([0.5, 0.1], [True, False], n_folds=1, thresholds=[0.5])
    assert r.fold_accuracies == (0.5,)
    # A different pair exactly at the threshold is rejected too, hence counted correct: 2 of 3.
    r = verify_scores([0.5, 0.5, 0.1], [True, False, False], n_folds=1, thresholds=[0.5])
    assert r.fold_accuracies == (2 / 3,)


def _insightface_reference(emb1: np.ndarray, emb2: np.ndarray, same: np.ndarray) -> np.ndarray:
    """InsightFace `calculate_roc` transcribed: squared distance, d² < t, KFold, first argmax."""
    from sklearn.model_selection import KFold

    thresholds = np.arange(0, 4, 0.01)
    dist = np.sum(np.square(emb1 - emb2), 1)
    accuracy = []
    for train, test in KFold(n_splits=10, shuffle=False).split(np.arange(len(same))):
        acc_train = [np.mean((dist[train] < t) == same[train]) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accuracy.append(np.mean((dist[test] < best) == same[test]))
    return np.array(accuracy)


def test_matches_insightface_distance_formulation() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    n, dim = 600, 16
    same = rng.random(n) < 0.5
    a = rng.normal(size=(n, dim))
    b = np.where(same[:, None], a + 1.2 * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ours = verify_pairs(a, b, same)
    ref = _insightface_reference(a, b, same)
    # Continuous random scores fall within float rounding of a grid value with probability ~0,
    # so cos > 1 - t/2 and d² < t decide every pair alike: accuracies agree exactly.
    np.testing.assert_array_equal(np.array(ours.fold_accuracies), ref)
    assert ours.accuracy_mean == pytest.approx(ref.mean(), abs=1e-15)
    assert 0.5 < ours.accuracy_mean < 1.0  # a task that is neither trivial nor hopeless


def test_cosine_grid_is_insightface_distance_grid() -> None:
    grid = insightface_cosine_thresholds()
    assert grid.shape == (400,)
    # d² = 2 - 2 cos for unit vectors: t = 0.01 k  <->  cos = 1 - 0.005 k.
    np.testing.assert_allclose(grid, 1 - 0.005 * np.arange(400), atol=1e-12)


def test_flip_sum_normalize_by_hand() -> None:
    # [3,0]+[1,0] = [4,0] -> [1,0];  [1,0]+[0,1] -> [1,1]/√2.
    out = flip_sum_normalize([[3.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(out, [[1.0, 0.0], [2**-0.5, 2**-0.5]], atol=1e-15)
    with pytest.raises(ValueError, match="row 0 has zero L2 norm"):
        flip_sum_normalize([[1.0, 0.0]], [[-1.0, 0.0]])
    with pytest.raises(ValueError, match=r"flipped must have the shape of embeddings \(1, 2\)"):
        flip_sum_normalize([[1.0, 0.0]], [[1.0, 0.0, 0.0]])
    # Without a flipped set the rows are only normalised: [3,4] -> [0.6,0.8].
    np.testing.assert_allclose(flip_sum_normalize([[3.0, 4.0]]), [[0.6, 0.8]], atol=1e-15)
    with pytest.raises(ValueError, match="embeddings row 0 has zero L2 norm"):
        flip_sum_normalize([[0.0, 0.0]])


def test_interleaved_layout_with_flip() -> None:
    # 20 pairs, rows 2i and 2i+1. Same pairs: [1,0,0] vs [0,1,0] (cos 0), flips both [0,0,10]:
    # fused [1,0,10] vs [0,1,10], cos 100/101. Different pairs: [1,0,0] vs [1,0,0] (cos 1),
    # flips [0,0,10] vs [0,0,-10]: fused [1,0,10] vs [1,0,-10], cos -99/101.
    # With the flip the classes separate (accuracy 1); without it they are inverted, and the best
    # any "cos > t" rule can do is reject or accept everything: accuracy 1/2.
    same = np.tile([True, False], 10)
    emb, flip = np.zeros((40, 3)), np.zeros((40, 3))
    for i, s in enumerate(same):
        emb[2 * i] = [1, 0, 0]
        emb[2 * i + 1] = [0, 1, 0] if s else [1, 0, 0]
        flip[2 * i] = [0, 0, 10]
        flip[2 * i + 1] = [0, 0, 10] if s else [0, 0, -10]
    assert verify_interleaved(emb, same, flipped=flip).accuracy_mean == 1.0
    assert verify_interleaved(emb, same).accuracy_mean == 0.5


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="need at least n_folds=10 pairs, got 9"):
        verify_scores(np.zeros(9), np.zeros(9), n_folds=10)
    with pytest.raises(ValueError, match="is_same must be 0/1"):
        verify_scores(np.zeros(10), np.full(10, 3), n_folds=2)
    with pytest.raises(ValueError, match="even number of rows"):
        verify_interleaved(np.ones((5, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="embeddings1 must be finite, got inf at row 0, column 1"):
        pair_cosine([[1.0, np.inf]], [[1.0, 0.0]])
