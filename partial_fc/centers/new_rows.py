"""Rows for new classes: the seed rule a fresh head follows, or the mean embedding of images.

Both return ``partial_fc.checkpoint.grow.RowSource`` callables: rows [lo, hi) of the whole
(C K, D) matrix, class c being rows [c K, (c + 1) K).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from partial_fc.checkpoint.grow import RowSource
from partial_fc.eval.embedding import embed_images
from partial_fc.eval.sources import ImageSource
from partial_fc.head.row_init import init_class_rows
from partial_fc.util.progress import Progress

#: the class-weight criteria and how each starts its rows from N(0, init_std^2) (the head's
#: ``_initial_rows``): PartialFC keeps them, NormFace's agents put them on the unit sphere
_START = {"PartialFC": "as drawn", "CContrastiveLoss": "unit", "CTripletLoss": "unit"}


def seed_rows(*, head_type: str | None, seed: int, dim: int, init_std: float) -> RowSource:
    """Row r from (seed, r) alone: what a fresh head of C + N classes holds for the new ids."""
    if head_type not in _START:
        raise ValueError(f"checkpoint head_type {head_type!r}: the seed rule is known for {sorted(_START)}")
    if not init_std > 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")

    def rows(lo: int, hi: int) -> torch.Tensor:
        drawn = init_class_rows(seed, lo, hi, dim, std=init_std)
        return nn.functional.normalize(drawn, dim=1) if _START[head_type] == "unit" else drawn

    return rows


@dataclass(frozen=True)
class ImageCenters:
    """``centers[i]``: unit mean embedding of identity ``identities[i]`` (``counts[i]`` images)."""

    identities: tuple[str | int, ...]
    counts: tuple[int, ...]
    centers: torch.Tensor  # (N, D) float32

    def row_source(self, *, first_class: int, rows_per_class: int) -> RowSource:
        """New class ``first_class + i`` gets center i in each of its K rows (sub-centers start equal)."""
        def rows(lo: int, hi: int) -> torch.Tensor:
            classes = torch.arange(lo, hi) // rows_per_class - first_class
            if classes.min() < 0 or classes.max() >= len(self.identities):
                raise ValueError(f"rows [{lo}, {hi}) are not rows of the {len(self.identities)} new classes")
            return self.centers[classes]

        return rows


def image_centers(model: nn.Module, source: ImageSource, *, image_size: int, batch_size: int = 128,
                  device: torch.device | str = "cpu", progress: bool = False) -> ImageCenters:
    """Per identity of ``source`` (sorted: folder names, or shard labels in numeric order):
    normalise(mean of the unit embeddings of its images). Unit embeddings, because the head
    scores cos(x, w): the w of unit length that maximises the sum of cosines over an
    identity's images is exactly this one. No flip: training sees the images as they are."""
    if source.kind == "flat-folder" or any(label is None for label in source.labels):
        raise ValueError(f"{source.path}: images without an identity; expected one sub-folder per identity "
                         f"or a shard directory with a manifest")
    bar = Progress(len(source), desc="embed", enabled=progress)
    emb, _ = embed_images(model, source.images(), image_size=image_size, batch_size=batch_size, device=device,
                          progress=bar)
    bar.close()
    if emb.shape[0] != len(source):
        raise ValueError(f"{source.path}: decoded {emb.shape[0]} images but indexed {len(source)}")
    unit = torch.nn.functional.normalize(torch.from_numpy(emb.astype(np.float64)), dim=1)
    labels = list(source.labels)
    identities = tuple(sorted(Counter(labels)))
    where = {identity: i for i, identity in enumerate(identities)}
    group = torch.tensor([where[label] for label in labels])
    sums = torch.zeros(len(identities), unit.shape[1], dtype=torch.float64).index_add_(0, group, unit)
    counts = torch.bincount(group, minlength=len(identities))
    centers = torch.nn.functional.normalize(sums / counts[:, None], dim=1).to(torch.float32)
    return ImageCenters(identities=identities, counts=tuple(counts.tolist()), centers=centers)
