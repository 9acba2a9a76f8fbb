"""Evaluation results as fixed-width text tables and as JSON.

JSON: dataclasses become objects, tuples and arrays lists, floats are rounded to
`SIGNIFICANT_DIGITS` significant digits (rates are counts over at most ~1e7 pairs, so more digits
are noise), and NaN / ±inf (an unavailable TAR, the all-reject threshold) become null.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partial_fc.eval.identification import IdentificationResult
from partial_fc.eval.roc import RocSummary
from partial_fc.metrics.verification import VerificationResult

SIGNIFICANT_DIGITS = 6
NOT_AVAILABLE = "n/a"


def round_float(x: float, *, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """`x` to `digits` significant digits; None for NaN and infinities (not valid JSON)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def to_jsonable(obj: Any) -> Any:
    """A structure of dicts, lists, str, int, float, bool and None equal in content to `obj`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round_float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON: {obj!r}")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width table: first column left-aligned, the others right-aligned."""
    if any(len(r) != len(header) for r in rows):
        lengths = sorted({len(r) for r in rows})
        raise ValueError(f"every row needs {len(header)} cells like the header, got lengths {lengths}")
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _percent(x: float) -> str:
    return f"{100.0 * x:.2f}" if math.isfinite(x) else NOT_AVAILABLE


def _rate_label(metric: str, rate: float) -> str:
    return f"{metric}@{rate:.0e}".replace("e-0", "e-")


def verification_table(results: Mapping[str, VerificationResult]) -> str:
    """One row per set: accuracy ± std in percent, mean best cosine threshold, pairs, folds."""
    header = ["set", "accuracy %", "± std", "threshold", "pairs", "folds"]
    rows = [
        [
            name,
            _percent(r.accuracy_mean),
            _percent(r.accuracy_std),
            f"{r.best_threshold_mean:.4f}",
            str(r.n_pairs),
            str(r.n_folds),
        ]
        for name, r in results.items()
    ]
    return format_table(header, rows)


def roc_table(results: Mapping[str, RocSummary]) -> str:
    """One row per set: TAR (%) at each FAR target (n/a when unmeasurable), EER %, AUC %."""
    targets = [t.far_target for t in next(iter(results.values())).tar_at_far] if results else []
    for name, r in results.items():
        if [t.far_target for t in r.tar_at_far] != targets:
            raise ValueError(f"{name!r} has FAR targets {[t.far_target for t in r.tar_at_far]}, "
                             f"expected the same as the first set: {targets}")
    header = ["set", *(_rate_label("TAR", t) for t in targets), "EER %", "AUC %"]
    rows = [
        [name, *(_percent(t.tar) for t in r.tar_at_far), _percent(r.eer), _percent(r.auc)]
        for name, r in results.items()
    ]
    return format_table(header, rows)


def identification_table(
    results: Mapping[str, IdentificationResult], *, ranks: Sequence[int] = (1, 5, 10)
) -> str:
    """One row per set: rank-k accuracy (%) for each k, then DIR (%) at each FPIR target."""
    first = next(iter(results.values()), None)
    targets = [d.far_target for d in first.dir_at_far] if first else []
    header = ["set", *(f"rank-{k}" for k in ranks), *(_rate_label("DIR", t) for t in targets)]
    rows = []
    for name, r in results.items():
        dirs = {d.far_target: d.dir for d in r.dir_at_far}
        rows.append([
            name,
            *(_percent(r.rank_k(k)) for k in ranks),
            *(_percent(dirs.get(t, math.nan)) for t in targets),
        ])
    return format_table(header, rows)
