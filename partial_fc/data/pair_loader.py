"""Batches of verification-pair images for evaluation.

    pairs = load_pairs("data/synth/heldout.pairs.npz")       # or an InsightFace lfw.bin
    for images in iter_pair_batches(pairs, batch_size=256):   # (b, 3, S, S) float32 in [-1, 1]
        embeddings.append(model(images))
    # embeddings[2i] and embeddings[2i+1] form pair i; pairs.issame[i] is the truth

Images come in pair order, so no index bookkeeping is needed; ``flip=True`` gives the mirrored
images in the same order (flip test-time augmentation sums the two embeddings).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from partial_fc.data.formats.pairs import PairSet
from partial_fc.data.loaders.worker_stream import to_float_chw


def iter_pair_batches(
    pairs: PairSet, *, batch_size: int, flip: bool = False, image_size: int | None = None
) -> Iterator[torch.Tensor]:
    """All 2N images of ``pairs`` in order, ``batch_size`` at a time (the last batch may be
    smaller). Images not at ``image_size`` (default: the first image's size) are resized."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = 2 * pairs.num_pairs
    if total == 0:
        return
    size = image_size if image_size is not None else pairs.image(0).shape[0]
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = np.empty((stop - start, size, size, 3), dtype=np.uint8)
        for k in range(start, stop):
            image = pairs.image(k)
            if image.shape[:2] != (size, size):
                image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
            batch[k - start] = image[:, ::-1] if flip else image
        yield to_float_chw(batch)
