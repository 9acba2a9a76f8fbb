"""Verification on pair sets during and after training, shared by all ranks.

Every rank embeds a contiguous slice of each pair set's images and the slices are all-gathered,
so evaluation takes 1/N of the time and no rank waits alone at a collective while another one
evaluates (which is what times out the process group in implementations that evaluate on rank 0
only). All ranks end with identical metrics; only rank 0 logs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from partial_fc.comm import Collectives
from partial_fc.data.pair_loader import iter_pair_batches
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.formats.pairs import PairSet
from partial_fc.eval import summarize_roc, verify_interleaved
from partial_fc.eval.verification import flip_sum_normalize, pair_cosine


def load_pair_sets(paths: tuple[str, ...] | list[str]) -> list[PairSet]:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(f"eval.pairs: file(s) not found: {missing}")
    return [load_pairs(p) for p in paths]


@torch.no_grad()
def embed_pairs(model: nn.Module, pairs: PairSet, *, comm: Collectives, batch_size: int, image_size: int,
                device: torch.device, flip: bool) -> np.ndarray:
    """(2N, D) float32 embeddings of all images of ``pairs`` in pair order (flip-summed and
    L2-normalised when ``flip``), identical on every rank."""
    total = 2 * pairs.num_pairs
    per_rank = -(-total // comm.world_size)
    lo, hi = min(total, comm.rank * per_rank), min(total, (comm.rank + 1) * per_rank)
    subset = _slice(pairs, lo, hi)

    def run(mirror: bool) -> torch.Tensor:
        parts = [model(batch.to(device)).float() for batch in iter_pair_batches(
            subset, batch_size=batch_size, flip=mirror, image_size=image_size)] if hi > lo else []
        local = torch.cat(parts)[: hi - lo] if parts else torch.zeros(0, _dim(model, image_size, device), device=device)
        padded = torch.zeros(per_rank, local.shape[1], device=device)
        padded[: local.shape[0]] = local
        return comm.all_gather(padded)[:total]

    was_training = model.training
    model.eval()
    try:
        embeddings = run(False).cpu().numpy()
        if flip:
            embeddings = flip_sum_normalize(embeddings, run(True).cpu().numpy())
    finally:
        model.train(was_training)
    return embeddings


def evaluate_pair_sets(model: nn.Module, pair_sets: list[PairSet], *, comm: Collectives, batch_size: int,
                       image_size: int, device: torch.device, flip: bool, far_targets) -> dict[str, dict]:
    """{set name: {"accuracy", "accuracy_std", "threshold", "auc", "eer", "tar@far=...": ...}}."""
    results = {}
    for pairs in pair_sets:
        emb = embed_pairs(model, pairs, comm=comm, batch_size=batch_size, image_size=image_size, device=device, flip=flip)
        acc = verify_interleaved(emb, pairs.issame)
        roc = summarize_roc(pair_cosine(emb[0::2], emb[1::2]), pairs.issame, far_targets=far_targets)
        row = {"accuracy": acc.accuracy_mean, "accuracy_std": acc.accuracy_std, "threshold": acc.best_threshold_mean,
               "auc": roc.auc, "eer": roc.eer}
        for t in roc.tar_at_far:
            row[f"tar@far={t.far_target:g}"] = t.tar
        results[pairs.name] = row
    return results


def _slice(pairs: PairSet, lo: int, hi: int) -> PairSet:
    """Images lo..hi of a pair set, as a PairSet of their own (pairs are not split-aware here:
    only the image order matters for embedding)."""
    images = pairs.images[lo:hi]
    if (hi - lo) % 2:  # PairSet needs an even image count; pad with the last image, trimmed later
        images = list(images) + [images[-1]] if isinstance(images, list) else np.concatenate([images, images[-1:]])
    return PairSet(name=pairs.name, images=images, issame=np.zeros(len(images) // 2, dtype=bool))


def _dim(model: nn.Module, image_size: int, device: torch.device) -> int:
    return int(model(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
