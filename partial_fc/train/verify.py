"""Verification on pair sets during and after training, shared by all ranks.

The same path as ``partial-fc eval --pairs`` (``eval.model_eval.evaluate_pairs``), with the
process group passed in: every rank embeds a contiguous slice of each pair set's images and
one all-gather assembles them, so all ranks end with identical metrics (which is what keeps
the process group from timing out while rank 0 would evaluate alone); only rank 0 logs them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from partial_fc.comm import Collectives
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.formats.pairs import PairSet
from partial_fc.eval.model_eval import evaluate_pairs


def load_pair_sets(paths: tuple[str, ...] | list[str]) -> list[PairSet]:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(f"eval.pairs: file(s) not found: {missing}")
    return [load_pairs(p) for p in paths]


def evaluate_pair_sets(model: nn.Module, pair_sets: list[PairSet], *, comm: Collectives, batch_size: int,
                       image_size: int, device: torch.device, flip: bool, far_targets) -> dict[str, dict]:
    """{set name: {"accuracy", "accuracy_std", "threshold", "auc", "eer", "tar@far=...": ...}}."""
    results = {}
    for pairs in pair_sets:
        result = evaluate_pairs(model, pairs, image_size=image_size, batch_size=batch_size, flip=flip, device=device,
                                far_targets=far_targets, comm=comm, progress=False)
        acc, roc = result.verification, result.roc
        row = {"accuracy": acc.accuracy_mean, "accuracy_std": acc.accuracy_std, "threshold": acc.best_threshold_mean,
               "auc": roc.auc, "eer": roc.eer}
        for t in roc.tar_at_far:
            row[f"tar@far={t.far_target:g}"] = t.tar
        results[pairs.name] = row
    return results
