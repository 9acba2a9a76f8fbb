"""Figures render to real, non-blank PNGs with the expected panels; no temp files are left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partial_fc.eval.plots import plot_roc, plot_score_histograms, plot_training_curves
from partial_fc.eval.roc import roc_curve

DPI = 120  # plots.save_png_atomic default


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _has_colour(px: np.ndarray, rgb: tuple[int, int, int], *, min_pixels: int = 20) -> bool:
    # Line cores are drawn in the exact colour; antialiased edges are blends, hence the tolerance.
    close = np.abs(px - np.array(rgb)).sum(axis=2) <= 12
    return int(close.sum()) >= min_pixels


TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's first three line colours


def _random_set(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    return rng.normal(size=n) * 0.15 + 0.1 + 0.4 * y, y


def test_roc_figure_has_one_panel_and_every_curve(tmp_path: Path) -> None:
    curves = {f"model{i}": roc_curve(*_random_set(i)) for i in range(3)}
    out = plot_roc(curves, tmp_path / "roc.png")
    assert out.path == tmp_path / "roc.png" and out.n_panels == 1
    px = _pixels(out.path)
    assert px.shape == (int(4.8 * DPI), int(6.4 * DPI), 3)
    for colour in TAB10:
        assert _has_colour(px, colour), colour
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]  # the temp file was renamed


def test_histograms_one_panel_per_set(tmp_path: Path) -> None:
    out = plot_score_histograms(
        {"lfw": _random_set(0), "cfp_fp": _random_set(1)}, tmp_path / "sub" / "hist.png", bins=40
    )
    assert out.n_panels == 2
    px = _pixels(out.path)
    assert px.shape[0] == int(2 * 2.6 * DPI)
    # Bars are alpha 0.5 over white: C0 blended half with white.
    blended = tuple(round((c + 255) / 2) for c in TAB10[0])
    assert _has_colour(px, blended, min_pixels=500)


def test_training_curves_skip_and_count_malformed_lines(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 10.0 / (s + 1), "lr": 0.1 * 0.99**s,
                         "samples_per_s": 1000.0 + s, "phase": "train"}) for s in range(50)]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"loss": 1.0}))  # no step
    lines.insert(12, json.dumps([1, 2, 3]))  # not an object
    lines.insert(20, "")  # blank: ignored, not counted
    metrics.write_text("\n".join(lines) + "\n")
    out = plot_training_curves(metrics, tmp_path / "train.png")
    assert (out.n_panels, out.n_skipped_lines) == (3, 3)
    px = _pixels(out.path)
    assert px.shape[0] == int(3 * 2.2 * DPI)
    assert _has_colour(px, TAB10[0], min_pixels=100)
    two = plot_training_curves(metrics, tmp_path / "two.png", keys=("loss",))
    assert two.n_panels == 1


def test_training_curves_missing_key_lists_present_keys(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match=r"no numeric values for \['lr'\]; numeric keys present: \['loss'\]"):
        plot_training_curves(metrics, tmp_path / "x.png", keys=("loss", "lr"))
    assert not (tmp_path / "x.png").exists()


def test_empty_inputs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one ROC curve"):
        plot_roc({}, tmp_path / "r.png")
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        plot_score_histograms({"a": _random_set(0)}, tmp_path / "h.png", bins=0)
