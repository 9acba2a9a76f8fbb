"""ROC, TAR at FAR, EER and AUC against hand-worked lists and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from partial_fc.eval.roc import (
    allowed_false_count,
    area_under_curve,
    equal_error_rate,
    roc_curve,
    summarize_roc,
    tar_at_far,
)

# Six pairs, sorted by score; P = 3 same, N = 3 different.
#   score 0.9 0.8 0.7 0.6 0.5 0.4
#   same    1   1   0   1   0   0
# Operating points (accept score >= t): t=inf (0,0) 0.9 (1,0) 0.8 (2,0) 0.7 (2,1) 0.6 (3,1)
# 0.5 (3,2) 0.4 (3,3) as (true accepts, false accepts).
SIX_SCORES = [0.6, 0.9, 0.4, 0.7, 0.5, 0.8]  # shuffled on purpose
SIX_LABELS = [1, 1, 0, 0, 0, 1]


def test_six_scores_operating_points() -> None:
    c = roc_curve(SIX_SCORES, SIX_LABELS)
    assert c.thresholds.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert c.true_accepts.tolist() == [0, 1, 2, 2, 3, 3, 3]
    assert c.false_accepts.tolist() == [0, 0, 0, 1, 1, 2, 3]
    # AUC = fraction of (same, different) pairs ordered correctly: 0.9 and 0.8 beat all 3,
    # 0.6 beats 0.5 and 0.4 -> 8/9. EER: at t=0.7 FAR = 1/3 (0.7 accepted) and FRR = 1/3
    # (0.6 rejected). Both are ratios of small integers: 1e-12 covers float rounding only.
    assert area_under_curve(c) == pytest.approx(8 / 9, abs=1e-12)
    assert equal_error_rate(c) == pytest.approx(1 / 3, abs=1e-12)


def test_tar_at_far_hand_list() -> None:
    # 15 pairs, N = 10 different, P = 5 same (S), descending:
    #   0.95 S | 0.90 D | 0.85 S | 0.80 S | 0.75 D | 0.70 S | 0.60 D | 0.55 D | 0.50 D | 0.40 D
    #   0.35 S | 0.30 D | 0.20 D | 0.10 D | 0.05 D
    # FAR 0.1 allows 1 false accept: accept down to 0.80 -> 3 of 5 same, TAR 0.6.
    # FAR 0.2 allows 2: down to 0.70 -> TAR 0.8. FAR 0.05 allows 0.5 -> unavailable.
    # FAR 1.0: TAR 1.0, first reached at 0.35 where 6 of 10 different are accepted.
    scores = [0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.60, 0.55, 0.50, 0.40, 0.35, 0.30, 0.20, 0.10, 0.05]
    labels = [1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    rows = tar_at_far(roc_curve(scores, labels), far_targets=[0.05, 0.1, 0.2, 1.0])
    assert [r.available for r in rows] == [False, True, True, True]
    assert math.isnan(rows[0].tar) and math.isnan(rows[0].threshold)
    assert [(r.tar, r.threshold, r.far_achieved) for r in rows[1:]] == [
        (0.6, 0.80, 0.1),
        (0.8, 0.70, 0.2),
        (1.0, 0.35, 0.6),
    ]


def test_tied_scores_are_never_split() -> None:
    # 0.9 S | 0.7 S, 0.7 D, 0.7 D | 0.4 D | 0.2 D;  N = 4, FAR 0.25 allows 1 false accept.
    # The 0.7 block brings 2 false accepts at once, so only t = 0.9 fits: TAR 1/2.
    # Splitting the tie (accepting the same 0.7 but not the different ones) would claim TAR 1.
    scores = [0.9, 0.7, 0.7, 0.7, 0.4, 0.2]
    labels = [1, 1, 0, 0, 0, 0]
    (row,) = tar_at_far(roc_curve(scores, labels), far_targets=[0.25])
    assert (row.tar, row.threshold, row.far_achieved) == (0.5, 0.9, 0.0)


def test_top_block_over_budget_gives_zero_tar_at_infinite_threshold() -> None:
    # 0.9 D, 0.9 D, 0.9 S | 0.1 D ;  N = 3, FAR 0.34 allows 1 false accept. The top block alone
    # brings 2, so only "reject all" fits: TAR 0 at threshold +inf (measurable, but zero).
    (row,) = tar_at_far(roc_curve([0.9, 0.9, 0.9, 0.1], [0, 0, 1, 0]), far_targets=[0.34])
    assert (row.tar, row.threshold, row.far_achieved, row.available) == (0.0, math.inf, 0.0, True)


def test_eer_interpolated_inside_a_tie_block() -> None:
    # 0.9 S | 0.5 S, 0.5 D, 0.5 D | 0.1 D ;  P = 2, N = 3.
    # Points (FAR, TAR): (0,0) (0,1/2) (2/3,1) (1,1). FAR = 1 - TAR on the segment
    # (0,1/2)->(2/3,1) at fraction u: (2/3)u = 1/2 - u/2  ->  u = 3/7, EER = 2/7.
    # AUC: 0.9 beats 3 different, the tied 0.5 counts 1/2 against each 0.5 and beats 0.1 -> 5/6.
    c = roc_curve([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0, 0])
    assert equal_error_rate(c) == pytest.approx(2 / 7, abs=1e-12)
    assert area_under_curve(c) == pytest.approx(5 / 6, abs=1e-12)


def test_allowed_false_count_reads_the_target_as_written() -> None:
    # In binary floats 0.29 * 100 = 28.999999999999996, floor 28: one false accept short.
    assert math.floor(0.29 * 100) == 28
    assert allowed_false_count(0.29, 100) == 29
    assert allowed_false_count(1e-6, 1_000_000) == 1
    assert allowed_false_count(1e-6, 999_999) == 0


def test_unreachable_far_targets_are_unavailable() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.5
    s = rng.normal(size=3000) + 2 * y
    summary = summarize_roc(s, y)
    n_neg = int((~y).sum())  # ~1500: FAR 1e-3 is 1.5 false accepts, 1e-4 is 0.15
    available = {r.far_target: r.available for r in summary.tar_at_far}
    assert available == {1e-6: False, 1e-5: False, 1e-4: False, 1e-3: True, 1e-2: True, 1e-1: True}
    assert all(math.isnan(summary.tar(t)) for t in (1e-6, 1e-5, 1e-4))
    assert summary.tar(1e-3) >= 0 and n_neg * 1e-3 >= 1


def _brute_tar(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    """Independent oracle: try every distinct score as threshold, count directly."""
    n_neg = int((~labels).sum())
    budget = allowed_false_count(far, n_neg)
    best = 0
    for t in np.unique(scores):
        fa = int(np.sum((scores >= t) & ~labels))
        if fa <= budget:
            best = max(best, int(np.sum((scores >= t) & labels)))
    return best / labels.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_and_brute_force(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.random(n) < 0.4
    # Rounded to 2 decimals so that ties occur and must be grouped as sklearn groups them.
    s = np.round(rng.normal(size=n) + 1.5 * y, 2)
    c = roc_curve(s, y)
    fpr, tpr, thr = metrics.roc_curve(y, s, drop_intermediate=False)
    # Same integer counts divided the same way: equal to the last bit.
    np.testing.assert_array_equal(c.fpr, fpr)
    np.testing.assert_array_equal(c.tpr, tpr)
    np.testing.assert_array_equal(c.thresholds[1:], thr[1:])
    # Trapezoid sums in a different order than sklearn's: 1e-12 is float summation noise.
    assert area_under_curve(c) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    for row in tar_at_far(c, far_targets=[0.01, 0.05, 0.1, 0.3]):
        assert row.tar == _brute_tar(s, y, row.far_target)
    # EER by an independent route: FAR and FRR at every threshold; the EER lies between
    # max over thresholds of min(FAR, FRR) and min of max(FAR, FRR).
    far_, frr_ = c.fpr, 1 - c.tpr
    eer = equal_error_rate(c)
    assert np.max(np.minimum(far_, frr_)) - 1e-12 <= eer <= np.min(np.maximum(far_, frr_)) + 1e-12


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="both same and different"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0/1 .* got 2 at index 1"):
        roc_curve([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="finite, got nan at index 0"):
        roc_curve([float("nan"), 0.2], [1, 0])
    with pytest.raises(ValueError, match=r"far_targets entries must be in \(0, 1\], got 0.0"):
        tar_at_far(roc_curve([0.1, 0.2], [1, 0]), far_targets=[0.0])
    with pytest.raises(KeyError, match="0.5 was not computed"):
        summarize_roc([0.1, 0.2], [1, 0]).tar(0.5)
