"""Evaluation protocols run with a backbone: pair files and gallery/probe folders.

The metrics are the pure functions of ``partial_fc.metrics`` and this package; this module only
computes embeddings (``embedding.py``) and hands their unit rows to them. ``evaluate_pairs`` is
also what the trainer runs on every rank during training (``comm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from partial_fc.comm import Collectives
from partial_fc.data.formats.pairs import PairSet
from partial_fc.eval.embedding import embed_images, embed_indexed
from partial_fc.eval.identification import IdentificationResult, identify
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, RocSummary, summarize_roc
from partial_fc.eval.sources import ImageSource
from partial_fc.metrics.verification import VerificationResult, flip_sum_normalize, pair_cosine, verify_scores
from partial_fc.util.progress import Progress


@dataclass(frozen=True)
class PairEvaluation:
    name: str
    verification: VerificationResult
    roc: RocSummary
    scores: np.ndarray  # (n_pairs,) cosine of the (flip-summed) unit embeddings
    issame: np.ndarray  # (n_pairs,) bool


def score_pairs(unit: np.ndarray, pairs: PairSet, *, far_targets: ArrayLike = DEFAULT_FAR_TARGETS,
                n_folds: int = 10) -> PairEvaluation:
    """k-fold accuracy and the exact ROC of pair i = (unit[2i], unit[2i+1]), (2N, D) unit rows."""
    if unit.shape[0] != 2 * pairs.num_pairs:
        raise ValueError(f"{pairs.name}: {unit.shape[0]} embeddings for {pairs.num_pairs} pairs, "
                         f"expected {2 * pairs.num_pairs}")
    scores = pair_cosine(unit[0::2], unit[1::2])
    return PairEvaluation(
        name=pairs.name,
        verification=verify_scores(scores, pairs.issame, n_folds=n_folds),
        roc=summarize_roc(scores, pairs.issame, far_targets=far_targets),
        scores=scores,
        issame=np.asarray(pairs.issame, bool),
    )


def evaluate_pairs(
    model: nn.Module, pairs: PairSet, *, image_size: int, batch_size: int, flip: bool,
    device: torch.device | str, far_targets: ArrayLike = DEFAULT_FAR_TARGETS, n_folds: int = 10,
    comm: Collectives | None = None, progress: bool = True,
) -> PairEvaluation:
    """10-fold accuracy (flip-summed normalised embeddings when ``flip``) and the exact ROC.

    With ``comm`` every rank embeds a slice and all ranks return the same result (one all-gather
    per pair set)."""
    bar = Progress(2 * pairs.num_pairs, desc=f"embed {pairs.name}", enabled=progress)
    emb, flipped = embed_indexed(model, pairs.image, 2 * pairs.num_pairs, image_size=image_size,
                                 batch_size=batch_size, flip=flip, device=device, comm=comm, progress=bar)
    bar.close()
    return score_pairs(flip_sum_normalize(emb, flipped), pairs, far_targets=far_targets, n_folds=n_folds)


@dataclass(frozen=True)
class GalleryProbeSplit:
    gallery_rows: tuple[np.ndarray, ...]  # per gallery identity, the image rows averaged into its entry
    gallery_labels: np.ndarray  # (n_gallery,) identity index
    probe_rows: np.ndarray  # (n_probes,) image rows
    probe_labels: np.ndarray  # (n_probes,) identity index (non-mated ones are not in gallery_labels)


def split_gallery_probe(labels: ArrayLike, *, gallery_per_identity: int = 1,
                        nonmated_fraction: float = 0.25) -> GalleryProbeSplit:
    """Identities in sorted order of their label (numeric for shards, by name for folders); the last ``floor(nonmated_fraction * n)`` are
    left out of the gallery, so all their images are non-mated probes (open set). Every other
    identity puts its first ``gallery_per_identity`` images (in source order) into the gallery
    and the rest into the probes."""
    if gallery_per_identity < 1:
        raise ValueError(f"--gallery-per-identity must be >= 1, got {gallery_per_identity}")
    if not 0.0 <= nonmated_fraction < 1.0:
        raise ValueError(f"--nonmated-fraction must be in [0, 1), got {nonmated_fraction}")
    raw = list(labels)
    if not raw or any(v is None for v in raw):
        raise ValueError("gallery/probe evaluation needs a label for every image (identity folders or shards)")
    numeric = all(isinstance(v, (int, np.integer)) for v in raw)
    labels = np.asarray(raw, dtype=np.int64) if numeric else np.asarray([str(v) for v in raw])
    names, index = np.unique(labels, return_inverse=True)
    n_open = int(np.floor(nonmated_fraction * names.size))
    gallery_rows, gallery_labels, probe_rows = [], [], []
    for ident in range(names.size):
        rows = np.flatnonzero(index == ident)
        if ident >= names.size - n_open:
            probe_rows.append(rows)
        else:
            gallery_rows.append(rows[:gallery_per_identity])
            gallery_labels.append(ident)
            probe_rows.append(rows[gallery_per_identity:])
    probes = np.concatenate(probe_rows) if probe_rows else np.zeros(0, np.int64)
    if not gallery_rows or probes.size == 0:
        raise ValueError(f"gallery/probe split is empty: {len(gallery_rows)} gallery identities and {probes.size} probes "
                         f"from {names.size} identities; each identity needs more than {gallery_per_identity} image(s)")
    return GalleryProbeSplit(tuple(gallery_rows), np.asarray(gallery_labels), probes, index[probes])


def identify_split(unit: np.ndarray, split: GalleryProbeSplit, *, far_targets: ArrayLike = DEFAULT_FAR_TARGETS,
                   max_rank: int = 20) -> IdentificationResult:
    """Gallery entries are the normalised mean of their images' unit embeddings."""
    gallery = np.stack([unit[rows].astype(np.float64).mean(axis=0) for rows in split.gallery_rows])
    return identify(gallery, split.gallery_labels, unit[split.probe_rows], split.probe_labels,
                    max_rank=min(max_rank, len(split.gallery_rows)), far_targets=far_targets)


def evaluate_gallery_probe(
    model: nn.Module, source: ImageSource, *, image_size: int, batch_size: int, flip: bool,
    device: torch.device | str, gallery_per_identity: int = 1, nonmated_fraction: float = 0.25,
    far_targets: ArrayLike = DEFAULT_FAR_TARGETS, progress: bool = True,
) -> IdentificationResult:
    split = split_gallery_probe(source.labels, gallery_per_identity=gallery_per_identity,
                                nonmated_fraction=nonmated_fraction)
    bar = Progress(len(source), desc=f"embed {source.path.name}", enabled=progress)
    emb, flipped = embed_images(model, source.images(), image_size=image_size, batch_size=batch_size, flip=flip,
                                device=device, progress=bar)
    bar.close()
    return identify_split(flip_sum_normalize(emb, flipped), split, far_targets=far_targets)
