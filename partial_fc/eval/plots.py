"""PNG figures for evaluation and training: ROC curves, score histograms, training curves.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global state,
no display needed) and written atomically: a temporary file in the target directory, then
os.replace, so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from partial_fc.metrics.inputs import as_same_labels, as_scores
from partial_fc.eval.roc import RocCurve
from partial_fc.util.atomic import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlotFile:
    path: Path
    n_panels: int
    n_skipped_lines: int = 0  # training curves only: metrics lines that could not be used


def save_png_atomic(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no display needed
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def plot_roc(
    curves: Mapping[str, RocCurve],
    path: str | Path,
    *,
    title: str = "ROC",
    min_far: float | None = None,
) -> PlotFile:
    """All `curves` (legend: name and AUC) on one panel, TAR against FAR on a log axis.

    Drawn as a step through the operating points: at each FAR x the height is the best TAR with
    FAR <= x, the quantity `roc.tar_at_far` reports.

    Points at FAR 0 cannot be drawn on a log axis and are left out; the axis starts at
    `min_far`, by default the smallest measurable FAR 1 / n_negative over the curves.
    """
    if not curves:
        raise ValueError("curves must name at least one ROC curve")
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        fpr, tpr = c.fpr, c.tpr
        keep = fpr > 0
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        ax.step(fpr[keep], tpr[keep], where="post", label=f"{name} (AUC {100 * auc:.2f}%)")
    lo = min_far if min_far is not None else min(1.0 / c.n_negative for c in curves.values())
    if not 0 < lo < 1:
        raise ValueError(f"min_far must be in (0, 1), got {lo}")
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return PlotFile(save_png_atomic(fig, path), n_panels=len(fig.axes))


def plot_score_histograms(
    sets: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, *, bins: int = 100
) -> PlotFile:
    """One panel per set: densities of same-pair and different-pair scores, sharing the x axis."""
    if not sets:
        raise ValueError("sets must name at least one (scores, labels) pair")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    fig = Figure(figsize=(6.4, 2.6 * len(sets)))
    axes = fig.subplots(len(sets), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (name, (scores, labels)) in zip(axes, sets.items()):
        s = as_scores(scores, name=f"{name} scores")
        y = as_same_labels(labels, name=f"{name} labels", n=s.size)
        edges = np.histogram_bin_edges(s, bins=bins)
        for mask, label in ((y, "same"), (~y, "different")):
            if mask.any():
                ax.hist(s[mask], bins=edges, density=True, alpha=0.5, label=f"{label} ({mask.sum()})")
        ax.set_title(name)
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("score")
    fig.tight_layout()
    return PlotFile(save_png_atomic(fig, path), n_panels=len(fig.axes))


def read_metrics_jsonl(path: str | Path) -> tuple[list[dict[str, float]], int]:
    """Usable records of a metrics JSONL file and the number of skipped non-blank lines.

    A line is skipped when it is not a JSON object or has no finite numeric `step`. Non-numeric
    values (strings, lists) are dropped from the record; NaN/inf values are kept (a NaN loss is
    worth seeing as a gap).
    """
    records, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            step = obj.get("step") if isinstance(obj, dict) else None
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
                skipped += 1
                continue
            records.append(
                {k: float(v) for k, v in obj.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
    return records, skipped


def plot_training_curves(
    metrics_path: str | Path,
    path: str | Path,
    *,
    keys: Sequence[str] = ("loss", "lr", "samples_per_s"),
    log_y: Sequence[str] = ("lr",),
) -> PlotFile:
    """One panel per key against `step` from a run's metrics JSONL; keys in `log_y` on a log axis."""
    if not keys:
        raise ValueError("keys must name at least one metric to plot")
    records, skipped = read_metrics_jsonl(metrics_path)
    if skipped:
        log.warning("%s: skipped %d malformed line(s)", metrics_path, skipped)
    seen = sorted({k for r in records for k in r} - {"step"})
    missing = [k for k in keys if not any(k in r for r in records)]
    if missing:
        raise ValueError(
            f"{metrics_path}: no numeric values for {missing}; numeric keys present: {seen}"
        )
    fig = Figure(figsize=(6.4, 2.2 * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
    for ax, key in zip(axes, keys):
        pts = sorted((r["step"], r[key]) for r in records if key in r)
        steps, values = zip(*pts)
        ax.plot(steps, values, linewidth=1.0)
        if key in log_y and all(v > 0 for v in values if math.isfinite(v)):
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(True, linestyle=":", linewidth=0.5)
    axes[-1].set_xlabel("step")
    if skipped:
        note = f"{Path(metrics_path).name} ({skipped} malformed line(s) skipped)"
        axes[0].set_title(note, fontsize="small")
    fig.tight_layout()
    return PlotFile(save_png_atomic(fig, path), n_panels=len(fig.axes), n_skipped_lines=skipped)
