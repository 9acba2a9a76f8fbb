"""JSON conversion and fixed-width tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from partial_fc.eval.identification import identify
from partial_fc.eval.report import (
    format_table,
    identification_table,
    roc_table,
    round_float,
    to_json,
    to_jsonable,
    verification_table,
)
from partial_fc.eval.roc import summarize_roc
from partial_fc.metrics.verification import verify_scores


def _hand_verification():
    # The hand case of test_eval_verification: accuracy 0.95 ± 0.15, mean threshold 0.275.
    scores = np.tile([0.6, 0.2], 10)
    scores[6] = 0.3
    return verify_scores(scores, np.tile([True, False], 10), thresholds=[0.9, 0.5, 0.25, 0.1])


def test_round_float() -> None:
    assert round_float(0.123456789) == 0.123457
    assert round_float(98765432.1) == 98765400.0
    assert round_float(float("nan")) is None
    assert round_float(-math.inf) is None


def test_json_of_a_roc_summary_marks_unavailable_as_null() -> None:
    # 4 pairs, N = 2: FAR 1e-3 is unmeasurable, FAR 0.5 allows one false accept.
    summary = summarize_roc([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], far_targets=[1e-3, 0.5])
    data = json.loads(to_json(summary))
    assert data["n_positive"] == 2 and data["n_negative"] == 2
    assert data["tar_at_far"][0] == {
        "far_target": 0.001, "tar": None, "threshold": None, "far_achieved": None, "available": False
    }
    # FAR 0.5: accept down to 0.7 -> both same pairs, one different.
    assert data["tar_at_far"][1] == {
        "far_target": 0.5, "tar": 1.0, "threshold": 0.7, "far_achieved": 0.5, "available": True
    }
    assert data["auc"] == 0.75  # 0.9 beats both; 0.7 beats 0.1 only -> 3/4


def test_jsonable_handles_numpy_and_nesting() -> None:
    out = to_jsonable({"a": np.float32(0.1), "b": np.int64(3), "c": np.array([1.0, np.nan]),
                       "d": (np.bool_(True), None, "x")})
    assert out == {"a": 0.1, "b": 3, "c": [1.0, None], "d": [True, None, "x"]}
    assert type(out["b"]) is int and type(out["d"][0]) is bool
    with pytest.raises(TypeError, match="cannot convert set to JSON"):
        to_jsonable({1, 2})


def test_verification_table() -> None:
    text = verification_table({"lfw": _hand_verification(), "cfp_fp": _hand_verification()})
    lines = text.splitlines()
    assert lines[0].split() == ["set", "accuracy", "%", "±", "std", "threshold", "pairs", "folds"]
    assert lines[2].split() == ["lfw", "95.00", "15.00", "0.2750", "20", "10"]
    # Fixed width: every column ends at the same character position on every line.
    assert len({len(line) for line in lines}) == 1


def test_roc_table_shows_unavailable_as_na() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.5
    summary = summarize_roc(rng.normal(size=500) + 2 * y, y)
    text = roc_table({"ijbc": summary})
    header, _, row = text.splitlines()
    assert header.split() == ["set", "TAR@1e-6", "TAR@1e-5", "TAR@1e-4", "TAR@1e-3", "TAR@1e-2",
                              "TAR@1e-1", "EER", "%", "AUC", "%"]
    cells = row.split()
    assert cells[1:5] == ["n/a"] * 4  # ~250 negatives cannot measure FAR below 4e-3
    assert cells[5] == f"{100 * summary.tar(1e-2):.2f}"
    assert cells[-1] == f"{100 * summary.auc:.2f}"


def test_identification_table() -> None:
    gallery = np.eye(3)
    probes = np.array([[1.0, 0.1, 0.0], [0.1, 0.0, 1.0], [0.0, 1.0, 0.2]])
    # probe 0 -> identity 0 (rank 1); probe 1 labelled 1 but nearest 2, then 0, then 1 (rank 3).
    r = identify(gallery, [0, 1, 2], probes, [0, 1, 9], max_rank=3, far_targets=[1.0])
    text = identification_table({"tiny": r}, ranks=(1, 3))
    assert text.splitlines()[2].split() == ["tiny", "50.00", "100.00", "50.00"]


def test_format_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match=r"every row needs 2 cells like the header, got lengths \[1\]"):
        format_table(["a", "b"], [["x"]])
