"""Closed-set ranks / CMC and open-set DIR on a hand-built 2-D gallery and against a brute-force
full-matrix oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from partial_fc.eval.identification import identify, score_probes


def _at(deg: float) -> list[float]:
    rad = math.radians(deg)
    return [math.cos(rad), math.sin(rad)]


# Gallery: unit vectors at 0, 30, 60, 90 degrees for identities 10, 20, 30, 40; cosine score of a
# probe at angle a with entry at angle g is cos(a - g), so ranks follow angular distance.
GALLERY = np.array([_at(0), _at(30), _at(60), _at(90)])
GALLERY_LABELS = np.array([10, 20, 30, 40])
# Mated probes (label, angle): expected rank, by angular distance to each entry
#   10 @ 10°  -> 0°:10  30°:20  60°:50  90°:80   rank 1, score cos 10°
#   10 @ 40°  -> 30°:10 60°:20  0°:40   90°:50   rank 3
#   40 @ 50°  -> 60°:10 30°:20  90°:40  0°:50    rank 3
#   30 @ 62°  -> 60°:2  ...                      rank 1, score cos 2°
# Non-mated probes (label 99), best score: @4° cos 4°, @8° cos 8°, @75° cos 15°, @200° cos 110°.
PROBES = np.array([_at(10), _at(40), _at(50), _at(62), _at(4), _at(8), _at(75), _at(200)])
PROBE_LABELS = np.array([10, 10, 40, 30, 99, 99, 99, 99])


def test_hand_gallery_ranks_and_cmc() -> None:
    r = identify(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=4, far_targets=[0.5])
    # ranks 1, 3, 3, 1 over 4 mated probes.
    assert r.cmc == (0.5, 0.5, 1.0, 1.0)
    assert r.rank1 == 0.5 and r.rank_k(3) == 1.0
    assert (r.n_gallery, r.n_mated_probes, r.n_nonmated_probes) == (4, 4, 4)
    ps = score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=4)
    assert ps.rank.tolist() == [1, 3, 3, 1, 0, 0, 0, 0]


def test_hand_gallery_open_set_dir() -> None:
    # Non-mated best scores, descending: cos4 > cos8 > cos15 > cos110 (n = 4).
    # FPIR 0.25: k = 1 -> threshold = 2nd highest = cos 8°; one alarm (cos 4°). Rank-1 mated
    #   scores are cos 10° (below cos 8°: missed) and cos 2° (detected): DIR 1/4.
    # FPIR 0.5: k = 2 -> threshold cos 15°; both rank-1 probes pass: DIR 2/4.
    # FPIR 1.0: k = 4 -> threshold -inf, every probe alarms: DIR 2/4, FPIR 1.
    # FPIR 0.1: k = 0.4 -> fewer than one false alarm allowed: unavailable.
    r = identify(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, far_targets=[0.1, 0.25, 0.5, 1.0])
    d = {row.far_target: row for row in r.dir_at_far}
    assert not d[0.1].available and math.isnan(d[0.1].dir)
    assert (d[0.25].dir, d[0.25].far_achieved) == (0.25, 0.25)
    assert d[0.25].threshold == pytest.approx(math.cos(math.radians(8)), abs=1e-12)
    assert (d[0.5].dir, d[0.5].far_achieved) == (0.5, 0.5)
    assert d[0.5].threshold == pytest.approx(math.cos(math.radians(15)), abs=1e-12)
    assert (d[1.0].dir, d[1.0].far_achieved, d[1.0].threshold) == (0.5, 1.0, -math.inf)


@pytest.mark.parametrize("block_size", [1, 3, 1000])
def test_block_size_does_not_change_anything(block_size: int) -> None:
    ref = score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=4, block_size=1000)
    got = score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=4, block_size=block_size)
    np.testing.assert_array_equal(got.rank, ref.rank)
    np.testing.assert_array_equal(got.top_nonmated_score, ref.top_nonmated_score)


def test_ranks_beyond_max_rank_are_reported_as_max_rank_plus_one() -> None:
    ps = score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=2)
    assert ps.rank.tolist()[:4] == [1, 3, 3, 1]  # 3 = "beyond rank 2"
    r = identify(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=2)
    assert r.cmc == (0.5, 0.5)


def test_ties_count_against_the_mated_entry() -> None:
    # Identity 2's entry is a copy of identity 1's: a probe equal to both ties exactly, and the
    # pessimistic rule ranks it second.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ps = score_probes(gallery, [1, 2, 3], np.array([[1.0, 0.0]]), [1], max_rank=3)
    assert ps.rank.tolist() == [2]


def _oracle_ranks(g: np.ndarray, gl: np.ndarray, p: np.ndarray, pl: np.ndarray) -> list[int]:
    """Full score matrix, one probe at a time: 1 + number of other entries scoring >= mated."""
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    full = p @ g.T
    ranks = []
    for i in range(p.shape[0]):
        j = int(np.flatnonzero(gl == pl[i])[0])
        ranks.append(1 + int(np.sum(np.delete(full[i], j) >= full[i, j])))
    return ranks


def test_random_gallery_matches_full_matrix_oracle() -> None:
    rng = np.random.default_rng(0)
    n_id, dim = 203, 8  # 203 is not a multiple of the block size 64: partial tiles on purpose
    centers = rng.normal(size=(n_id, dim))
    gallery = centers + 0.5 * rng.normal(size=(n_id, dim))
    probe_labels = rng.integers(0, n_id, size=150)
    probes = centers[probe_labels] + 0.9 * rng.normal(size=(150, dim))
    labels = np.arange(n_id)
    max_rank = 300  # beyond the gallery size, so every true rank is reported as is
    ps = score_probes(gallery, labels, probes, probe_labels, max_rank=max_rank, block_size=64)
    assert ps.rank.tolist() == _oracle_ranks(gallery, labels, probes, probe_labels)
    r = identify(gallery, labels, probes, probe_labels, max_rank=10, block_size=64)
    oracle = np.array(_oracle_ranks(gallery, labels, probes, probe_labels))
    assert r.cmc == tuple(float(np.mean(oracle <= k)) for k in range(1, 11))
    assert 0.1 < r.rank1 < 0.95  # neither trivial nor hopeless, so the comparison means something


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="label 7 occurs more than once"):
        score_probes(GALLERY, [7, 7, 1, 2], PROBES, PROBE_LABELS)
    with pytest.raises(ValueError, match="probes have dim 3 but the gallery has dim 2"):
        score_probes(GALLERY, GALLERY_LABELS, np.ones((1, 3)), [10])
    with pytest.raises(ValueError, match="no probe label occurs in gallery_labels"):
        identify(GALLERY, GALLERY_LABELS, PROBES[:1], [99])
    with pytest.raises(ValueError, match="max_rank must be >= 1, got 0"):
        score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS, max_rank=0)
    with pytest.raises(ValueError, match=r"probe_labels must have shape \(8,\)"):
        score_probes(GALLERY, GALLERY_LABELS, PROBES, PROBE_LABELS[:3])
