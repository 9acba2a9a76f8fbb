"""IJB-B/C meta parsing and template aggregation on a constructed 3-template example."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from partial_fc.eval.ijb import aggregate_templates, evaluate_ijb, ijb_pair_scores
from partial_fc.eval.ijb_meta import (
    load_ijb_meta,
    read_face_tid_mid,
    read_name_5pts_score,
    read_template_pair_label,
)

# image   template media  embedding   detector score
# 1.jpg   1        100    [1, 0, 0]   1.0
# 2.jpg   1        100    [0, 1, 0]   0.5
# 3.jpg   1        101    [0, 0, 2]   1.0
# 4.jpg   2        200    [1, 1, 0]   1.0
# 5.jpg   3        300    [0, 1, 0]   0.8
# 6.jpg   3        301    [0, 1, 1]   0.5
NAMES = ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg", "6.jpg"]
TEMPLATES = [1, 1, 1, 2, 3, 3]
MEDIAS = [100, 100, 101, 200, 300, 301]
EMB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2], [1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=np.float64)
DET = [1.0, 0.5, 1.0, 1.0, 0.8, 0.5]
PAIRS = [(1, 2, 0), (1, 3, 0), (2, 3, 1)]

# InsightFace defaults (detector weights, no per-image normalisation), worked by hand:
#   T1: media 100 = mean([1,0,0]·1, [0,1,0]·0.5) = [0.5, 0.25, 0]; media 101 = [0,0,2]
#       sum [0.5, 0.25, 2], |.|² = 4.3125
#   T2: [1, 1, 0], |.|² = 2
#   T3: media 300 = [0, 0.8, 0]; media 301 = [0, 0.5, 0.5]; sum [0, 1.3, 0.5], |.|² = 1.94
#   s12 = 0.75 / √(4.3125·2),  s13 = (0.25·1.3 + 2·0.5) / √(4.3125·1.94),  s23 = 1.3 / √(2·1.94)
DEFAULT_SCORES = [
    0.75 / math.sqrt(4.3125 * 2),
    1.325 / math.sqrt(4.3125 * 1.94),
    1.3 / math.sqrt(2 * 1.94),
]
# No detector weights, each image normalised first:
#   T1: media 100 = mean([1,0,0],[0,1,0]) = [.5,.5,0]; media 101 = [0,0,1]; sum [.5,.5,1], |.|² 1.5
#   T2: [1,1,0]/√2 direction, |.|² 2 before normalising
#   T3: [0,1,0] + [0,1,1]/√2 = [0, 1 + r, r] with r = 1/√2, |.|² = (1+r)² + r²
R = 1 / math.sqrt(2)
T3_SQ = (1 + R) ** 2 + R**2
NORMALISED_SCORES = [
    1.0 / math.sqrt(1.5 * 2),
    (0.5 * (1 + R) + R) / math.sqrt(1.5 * T3_SQ),
    (1 + R) / math.sqrt(2 * T3_SQ),
]


def _write_meta(root: Path, *, prefix: str = "ijbc") -> Path:
    (root / f"{prefix}_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(NAMES, TEMPLATES, MEDIAS))
    )
    (root / f"{prefix}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {c}\n" for a, b, c in PAIRS)
    )
    lmk = " ".join(["10.5"] * 10)
    (root / f"{prefix}_name_5pts_score.txt").write_text(
        "".join(f"{n} {lmk} {s}\n" for n, s in zip(NAMES, DET))
    )
    return root


def test_template_scores_match_hand_computation(tmp_path: Path) -> None:
    meta = load_ijb_meta(_write_meta(tmp_path), dataset="IJBC")
    # Each hand score is a few float64 operations apart from ours: 1e-12 is rounding only.
    np.testing.assert_allclose(ijb_pair_scores(EMB, meta), DEFAULT_SCORES, atol=1e-12)
    np.testing.assert_allclose(
        ijb_pair_scores(EMB, meta, use_detector_score=False, normalize_images=True),
        NORMALISED_SCORES,
        atol=1e-12,
    )


def test_flip_embeddings_are_summed_before_anything_else(tmp_path: Path) -> None:
    meta = load_ijb_meta(_write_meta(tmp_path), dataset="IJBC")
    flip = np.random.default_rng(0).normal(size=EMB.shape)
    np.testing.assert_allclose(
        ijb_pair_scores(EMB - flip, meta, flipped=flip), DEFAULT_SCORES, atol=1e-12
    )


def test_end_to_end_roc(tmp_path: Path) -> None:
    meta = load_ijb_meta(_write_meta(tmp_path, prefix="ijbb"), dataset="IJBB")
    result = evaluate_ijb(EMB, meta, far_targets=[0.5, 1.0])
    assert (result.n_images, result.n_templates, result.n_pairs) == (6, 3, 3)
    # Scores ≈ 0.255, 0.458 (different) and 0.660 (same): the same pair is on top.
    assert result.roc.auc == 1.0 and result.roc.eer == 0.0
    assert result.roc.tar(0.5) == 1.0 and result.roc.tar_at_far[0].far_achieved == 0.0


def test_aggregation_is_independent_of_image_order() -> None:
    perm = np.array([5, 2, 0, 4, 1, 3])
    a = aggregate_templates(EMB, templates=np.array(TEMPLATES), medias=np.array(MEDIAS))
    b = aggregate_templates(
        EMB[perm], templates=np.array(TEMPLATES)[perm], medias=np.array(MEDIAS)[perm]
    )
    assert a.template_ids.tolist() == b.template_ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-15)


def test_media_ids_are_scoped_by_template() -> None:
    # The same media id in two templates must form two groups, not one.
    emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = aggregate_templates(emb, templates=np.array([1, 2]), medias=np.array([7, 7]))
    np.testing.assert_allclose(out.embeddings, emb, atol=1e-15)


def test_pair_file_reads_back_what_was_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.integers(1, 999, 50), rng.integers(1, 999, 50), rng.integers(0, 2, 50)])
    good = tmp_path / "pairs.txt"
    good.write_text("".join(f"{a} {b} {c}\n" for a, b, c in rows))
    pairs = read_template_pair_label(good)
    assert pairs.template1.tolist() == rows[:, 0].tolist()
    assert pairs.template2.tolist() == rows[:, 1].tolist()
    assert pairs.labels.tolist() == (rows[:, 2] == 1).tolist()


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        (read_face_tid_mid, "1.jpg 1 100\n\n2.jpg 1\n", r"face_tid_mid.txt:3: expected 3 fields"),
        (read_face_tid_mid, "1.jpg 1 100\n2.jpg x 5\n", r":2: template id must be an integer, got 'x'"),
        (read_template_pair_label, "1 2 1\n\n3 4 2\n", r"pair_label.txt:3: label must be 0 or 1, got 2"),
        (read_template_pair_label, "1 2 1\n3 4\n", r"pair_label.txt:2: expected 3 fields"),
        (read_template_pair_label, "1 2 1\n3 4.5 0\n", r":2: template id 2 must be an integer, got '4.5'"),
        (read_template_pair_label, "\n\n", r"pair_label.txt: no data lines"),
        (read_name_5pts_score, "1.jpg " + "1 " * 10 + "nan\n", r"5pts_score.txt:1: detector score must be finite"),
        (read_name_5pts_score, "1.jpg " + "1 " * 9 + "0.9\n", r"5pts_score.txt:1: expected 12 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, reader: Callable[[Path], object], text: str, message: str
) -> None:
    name = {
        read_face_tid_mid: "ijbc_face_tid_mid.txt",
        read_template_pair_label: "ijbc_template_pair_label.txt",
        read_name_5pts_score: "ijbc_name_5pts_score.txt",
    }[reader]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        reader(path)


def test_inconsistent_meta_files_are_errors(tmp_path: Path) -> None:
    root = _write_meta(tmp_path)
    lmk = root / "ijbc_name_5pts_score.txt"
    lines = lmk.read_text().splitlines(keepends=True)
    lmk.write_text("".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(ValueError, match=r"image 0 \(0-based\) is '1.jpg' in .* but '2.jpg'"):
        load_ijb_meta(root, dataset="IJBC")
    _write_meta(tmp_path)
    (root / "ijbc_template_pair_label.txt").write_text("1 2 0\n1 77 1\n")
    with pytest.raises(ValueError, match="refers to template 77, which has no image"):
        load_ijb_meta(root, dataset="IJBC")
    with pytest.raises(ValueError, match=r"dataset must be one of \['IJBB', 'IJBC'\], got 'ijbc'"):
        load_ijb_meta(root, dataset="ijbc")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="IJB meta file not found"):
        load_ijb_meta(tmp_path / "nowhere", dataset="IJBB")
    meta = load_ijb_meta(_write_meta(tmp_path), dataset="IJBC")
    with pytest.raises(ValueError, match=r"one row per image of the IJBC meta files \(6\)"):
        ijb_pair_scores(EMB[:5], meta)
    with pytest.raises(ValueError, match="template 1 aggregates to a zero vector"):
        aggregate_templates(
            EMB, templates=np.array(TEMPLATES), medias=np.array(MEDIAS),
            detector_scores=np.array([0.0, 0, 0, 1, 1, 1]),
        )
