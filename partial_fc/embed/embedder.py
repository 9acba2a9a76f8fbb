"""Batched backbone forward passes over a stream of images."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from partial_fc.util.progress import Progress
from partial_fc.data.loaders.worker_stream import to_float_chw


def _batches(images: Iterable[np.ndarray], *, batch_size: int, image_size: int) -> Iterable[np.ndarray]:
    batch: list[np.ndarray] = []
    for image in images:
        if image.shape[:2] != (image_size, image_size):
            image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
        batch.append(image)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.no_grad()
def embed_images(
    model: nn.Module, images: Iterable[np.ndarray], *, image_size: int, batch_size: int = 128,
    flip: bool = False, device: torch.device | str = "cpu", progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings, embeddings of the mirrored images or None), each (n, D) float32, not normalised.

    Images are (H, W, 3) uint8 RGB, resized to ``image_size`` when needed and mapped to [-1, 1]
    as in training. ``model`` should be in eval mode (BatchNorm statistics).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plain, mirrored = [], []
    for batch in _batches(images, batch_size=batch_size, image_size=image_size):
        plain.append(model(to_float_chw(batch).to(device)).float().cpu().numpy())
        if flip:
            mirrored.append(model(to_float_chw(batch[:, :, ::-1]).to(device)).float().cpu().numpy())
        if progress is not None:
            progress.update(len(batch))
    if not plain:
        raise ValueError("no images to embed")
    return np.concatenate(plain), (np.concatenate(mirrored) if flip else None)


def unit_rows(embeddings: np.ndarray, flipped: np.ndarray | None = None) -> np.ndarray:
    """float32 unit rows of embeddings (+ flipped, summed before normalising, as InsightFace does)."""
    x = embeddings.astype(np.float64) + (flipped if flipped is not None else 0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    if zero.size:
        raise ValueError(f"embedding row {zero[0]} has zero L2 norm; cannot normalise it")
    return (x / norms).astype(np.float32)
