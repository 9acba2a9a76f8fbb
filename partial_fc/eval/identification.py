"""1:N identification against a gallery: closed-set rank-k / CMC and open-set DIR at FPIR.

Scores are cosine similarities. The gallery holds one entry per identity (aggregate several
images into a template first). A probe is *mated* when its label is in the gallery, *non-mated*
otherwise. The probe x gallery score matrix is never built whole: it is visited in
`block_size` x `block_size` tiles, keeping per probe only its mated score and its `max_rank`
highest non-mated scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from partial_fc.metrics.inputs import as_rate_targets, l2_normalize
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, allowed_false_count


@dataclass(frozen=True)
class ProbeScores:
    """Per-probe outcome of the gallery search, arrays of shape (n_probes,)."""

    mated: np.ndarray  # bool, label present in the gallery
    mated_score: np.ndarray  # float64, score with the own-identity entry (NaN if non-mated)
    rank: np.ndarray  # int64, 1-based rank of the own identity; max_rank + 1 = beyond; 0 if non-mated
    top_nonmated_score: np.ndarray  # float64, best score with any other identity
    max_rank: int


@dataclass(frozen=True)
class DirAtFar:
    """Detection and identification rate at a false-positive identification rate (FPIR).

    Threshold rule: an alarm is a score > threshold; the threshold is the (k+1)-th highest
    non-mated top score, k = floor(far_target * n_nonmated), so at most k non-mated probes alarm.
    Unavailable (NaN) when k < 1: the non-mated probes cannot measure that rate.
    """

    far_target: float
    dir: float
    threshold: float
    far_achieved: float
    available: bool


@dataclass(frozen=True)
class IdentificationResult:
    n_gallery: int
    n_mated_probes: int
    n_nonmated_probes: int
    rank1: float
    cmc: tuple[float, ...]  # cmc[k-1]: fraction of mated probes whose identity is in the top k
    dir_at_far: tuple[DirAtFar, ...]  # empty when there are no non-mated probes

    def rank_k(self, k: int) -> float:
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"k must be in [1, {len(self.cmc)}] (max_rank), got {k}")
        return self.cmc[k - 1]


def _gallery_index(gallery_labels: np.ndarray, probe_labels: np.ndarray) -> np.ndarray:
    """Index of each probe's identity in the gallery, -1 where absent."""
    order = np.argsort(gallery_labels, kind="stable")
    sorted_labels = gallery_labels[order]
    dup = np.flatnonzero(sorted_labels[1:] == sorted_labels[:-1])
    if dup.size:
        raise ValueError(
            f"gallery_labels must be unique (one entry per identity), label "
            f"{sorted_labels[dup[0]].item()!r} occurs more than once; aggregate its images first"
        )
    pos = np.clip(np.searchsorted(sorted_labels, probe_labels), 0, sorted_labels.size - 1)
    found = sorted_labels[pos] == probe_labels
    return np.where(found, order[pos], -1)


def _as_labels(x: ArrayLike, *, name: str, n: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the embeddings, got {arr.shape}")
    return arr


def score_probes(
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    probes: ArrayLike,
    probe_labels: ArrayLike,
    *,
    max_rank: int = 20,
    block_size: int = 1024,
) -> ProbeScores:
    """Search every probe (n_p, dim) in the gallery (n_g, dim).

    Ties are pessimistic: a non-mated entry scoring exactly the mated score ranks ahead of it.
    Peak extra memory is O(block_size * (block_size + max_rank)) floats plus O(n_p * max_rank).
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    g = l2_normalize(gallery, name="gallery")
    p = l2_normalize(probes, name="probes")
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"probes have dim {p.shape[1]} but the gallery has dim {g.shape[1]}")
    g_labels = _as_labels(gallery_labels, name="gallery_labels", n=g.shape[0])
    p_labels = _as_labels(probe_labels, name="probe_labels", n=p.shape[0])
    mated_index = _gallery_index(g_labels, p_labels)

    n_p, n_g = p.shape[0], g.shape[0]
    mated_score = np.full(n_p, np.nan)
    top = np.full((n_p, max_rank), -np.inf)  # best non-mated scores seen so far, unordered
    for p0 in range(0, n_p, block_size):
        p1 = min(p0 + block_size, n_p)
        for g0 in range(0, n_g, block_size):
            g1 = min(g0 + block_size, n_g)
            tile = p[p0:p1] @ g[g0:g1].T
            local = mated_index[p0:p1] - g0
            rows = np.flatnonzero((local >= 0) & (local < g1 - g0))
            # Read the mated score from the same product the others come from, so a tie is a
            # tie bit for bit, then take it out of the non-mated candidates.
            mated_score[p0 + rows] = tile[rows, local[rows]]
            tile[rows, local[rows]] = -np.inf
            merged = np.concatenate([top[p0:p1], tile], axis=1)
            cut = merged.shape[1] - max_rank
            top[p0:p1] = np.partition(merged, cut, axis=1)[:, cut:]

    mated = mated_index >= 0
    ahead = (top >= mated_score[:, None]).sum(axis=1)  # NaN compares False for non-mated rows
    rank = np.where(mated, 1 + ahead, 0).astype(np.int64)
    return ProbeScores(
        mated=mated,
        mated_score=mated_score,
        rank=rank,
        top_nonmated_score=top.max(axis=1),
        max_rank=max_rank,
    )


def dir_at_far(
    probe_scores: ProbeScores, *, far_targets: ArrayLike = DEFAULT_FAR_TARGETS
) -> tuple[DirAtFar, ...]:
    """Open-set DIR at each FPIR target; empty when no probe is non-mated."""
    nonmated_top = np.sort(probe_scores.top_nonmated_score[~probe_scores.mated])[::-1]
    n_nm = nonmated_top.size
    if n_nm == 0:
        return ()
    m = probe_scores.mated
    rank1 = probe_scores.rank[m] == 1
    mated_score = probe_scores.mated_score[m]
    rows = []
    for target in as_rate_targets(far_targets, name="far_targets"):
        k = allowed_false_count(target, n_nm)
        if k < 1:
            nan = float("nan")
            rows.append(DirAtFar(target, nan, nan, nan, available=False))
            continue
        threshold = float(nonmated_top[k]) if k < n_nm else -np.inf
        rows.append(
            DirAtFar(
                far_target=target,
                dir=float(np.mean(rank1 & (mated_score > threshold))),
                threshold=threshold,
                far_achieved=float(np.sum(nonmated_top > threshold) / n_nm),
                available=True,
            )
        )
    return tuple(rows)


def identify(
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    probes: ArrayLike,
    probe_labels: ArrayLike,
    *,
    max_rank: int = 20,
    far_targets: ArrayLike = DEFAULT_FAR_TARGETS,
    block_size: int = 1024,
) -> IdentificationResult:
    """Closed-set CMC over the mated probes and open-set DIR at FPIR over all probes."""
    ps = score_probes(
        gallery, gallery_labels, probes, probe_labels, max_rank=max_rank, block_size=block_size
    )
    n_mated = int(ps.mated.sum())
    if n_mated == 0:
        raise ValueError("no probe label occurs in gallery_labels; CMC needs mated probes")
    ranks = ps.rank[ps.mated]
    cmc = tuple(float(np.mean(ranks <= k)) for k in range(1, max_rank + 1))
    return IdentificationResult(
        n_gallery=int(np.asarray(gallery_labels).size),
        n_mated_probes=n_mated,
        n_nonmated_probes=int(ps.mated.size - n_mated),
        rank1=cmc[0],
        cmc=cmc,
        dir_at_far=dir_at_far(ps, far_targets=far_targets),
    )
