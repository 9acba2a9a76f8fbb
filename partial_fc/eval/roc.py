"""Exact ROC of a verification score list: TAR at FAR, EER, AUC.

A pair is accepted ("same") when its score is >= the threshold. The curve has one operating point
per distinct score (tied scores are accepted or rejected together, never split), plus the
all-reject point (FAR 0, TAR 0, threshold +inf) — the same points as
`sklearn.metrics.roc_curve(..., drop_intermediate=False)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from numpy.typing import ArrayLike

from partial_fc.metrics.inputs import as_rate_targets, as_same_labels, as_scores

DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class RocCurve:
    """Operating points in order of decreasing threshold; index 0 is the all-reject point."""

    thresholds: np.ndarray  # (k,) float64, thresholds[0] = +inf, then distinct scores descending
    true_accepts: np.ndarray  # (k,) int64, positives with score >= threshold
    false_accepts: np.ndarray  # (k,) int64, negatives with score >= threshold
    n_positive: int
    n_negative: int

    @property
    def tpr(self) -> np.ndarray:
        return self.true_accepts / self.n_positive

    @property
    def fpr(self) -> np.ndarray:
        return self.false_accepts / self.n_negative


@dataclass(frozen=True)
class TarAtFar:
    """Largest TAR among thresholds whose FAR does not exceed `far_target`, at the strictest
    threshold that reaches it (+inf with TAR 0 when even the top score block is over budget).

    `available` is False (and tar, threshold, far_achieved are NaN) when
    far_target * n_negative < 1: fewer than one false accept would be allowed, so the
    negatives cannot measure that FAR at all; see `allowed_false_count`.
    """

    far_target: float
    tar: float
    threshold: float
    far_achieved: float
    available: bool


@dataclass(frozen=True)
class RocSummary:
    n_positive: int
    n_negative: int
    auc: float
    eer: float
    tar_at_far: tuple[TarAtFar, ...]

    def tar(self, far_target: float) -> float:
        """TAR at `far_target` (NaN if unavailable); the target must be one that was computed."""
        for row in self.tar_at_far:
            if math.isclose(row.far_target, far_target, rel_tol=1e-9):
                return row.tar
        computed = [row.far_target for row in self.tar_at_far]
        raise KeyError(f"TAR at FAR {far_target} was not computed; computed: {computed}")


def allowed_false_count(far_target: float, n_negative: int) -> int:
    """floor(far_target * n_negative), with the target read as the decimal the user wrote.

    Decimal(repr(...)) keeps 1e-6 * 1_000_000 at exactly 1 instead of 0.999... in binary floats.
    A result of 0 means the target is below the resolution 1 / n_negative: not measurable.
    """
    return math.floor(Decimal(repr(float(far_target))) * n_negative)


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
    """Exact ROC of `scores` (n,) against same/different `labels` (n,); needs both classes."""
    s = as_scores(scores, name="scores")
    y = as_same_labels(labels, name="labels", n=s.size)
    n_pos = int(y.sum())
    n_neg = int(s.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC needs both same and different pairs, got {n_pos} same and {n_neg} different"
        )
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    # Last index of each block of equal scores: ties move together.
    block_end = np.r_[np.flatnonzero(np.diff(s_sorted) != 0.0), s.size - 1]
    tps = np.cumsum(y[order], dtype=np.int64)[block_end]
    fps = (block_end + 1) - tps
    return RocCurve(
        thresholds=np.r_[np.inf, s_sorted[block_end]],
        true_accepts=np.r_[0, tps].astype(np.int64),
        false_accepts=np.r_[0, fps].astype(np.int64),
        n_positive=n_pos,
        n_negative=n_neg,
    )


def area_under_curve(curve: RocCurve) -> float:
    """Trapezoidal area; a tie block becomes a straight segment, i.e. half credit for ties."""
    fpr, tpr = curve.fpr, curve.tpr
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def equal_error_rate(curve: RocCurve) -> float:
    """The rate where FAR = FRR (= 1 - TAR) on the ROC polyline.

    Between two operating points the curve is the straight segment (what randomising between the
    two thresholds achieves). FAR + TAR - 1 rises strictly along the curve from -1 to +1, so it
    crosses 0 exactly once; the EER is the FAR at that crossing, by linear interpolation.
    """
    fpr, tpr = curve.fpr, curve.tpr
    g = fpr + tpr - 1.0
    i = int(np.argmax(g >= 0.0))  # first point on or past the crossing; g[-1] = 1 so it exists
    if g[i] == 0.0:
        return float(fpr[i])
    t = -g[i - 1] / (g[i] - g[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tar_at_far(
    curve: RocCurve, *, far_targets: ArrayLike = DEFAULT_FAR_TARGETS
) -> tuple[TarAtFar, ...]:
    """For each target, the operating point with the most true accepts among those whose false
    accepts are at most floor(target * n_negative). Never interpolated or extrapolated."""
    rows = []
    for target in as_rate_targets(far_targets, name="far_targets"):
        allowed = allowed_false_count(target, curve.n_negative)
        if allowed < 1:
            nan = float("nan")
            rows.append(TarAtFar(target, nan, nan, nan, available=False))
            continue
        # Both counts rise along the curve: the last point within budget has the largest TAR,
        # and the first point with that TAR is the strictest threshold reaching it.
        last = int(np.searchsorted(curve.false_accepts, allowed, side="right")) - 1
        i = int(np.searchsorted(curve.true_accepts, curve.true_accepts[last], side="left"))
        rows.append(
            TarAtFar(
                far_target=target,
                tar=float(curve.true_accepts[i] / curve.n_positive),
                threshold=float(curve.thresholds[i]),
                far_achieved=float(curve.false_accepts[i] / curve.n_negative),
                available=True,
            )
        )
    return tuple(rows)


def summarize_roc(
    scores: ArrayLike, labels: ArrayLike, *, far_targets: ArrayLike = DEFAULT_FAR_TARGETS
) -> RocSummary:
    """AUC, EER and TAR at each FAR target of `scores` against same/different `labels`."""
    curve = roc_curve(scores, labels)
    return RocSummary(
        n_positive=curve.n_positive,
        n_negative=curve.n_negative,
        auc=area_under_curve(curve),
        eer=equal_error_rate(curve),
        tar_at_far=tar_at_far(curve, far_targets=far_targets),
    )
