"""Batched backbone forward passes over images: the one embedding path of every evaluation.

``embed_images`` serves a stream (folders, shards, IJB crops); ``embed_indexed`` serves images
addressed by position (a pair set) and, given a ``Collectives``, splits them over the ranks:
each rank embeds one contiguous slice and the slices are all-gathered, so evaluating during
training takes 1/N of the time and no rank waits alone at a collective while another one
evaluates. Both return raw embeddings; ``metrics.verification.flip_sum_normalize`` makes the
unit rows every metric reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch import nn

from partial_fc.comm import Collectives
from partial_fc.data.loaders.worker_stream import to_float_chw
from partial_fc.util.progress import Progress


def _batches(images: Iterable[np.ndarray], *, batch_size: int, image_size: int) -> Iterator[np.ndarray]:
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


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """BatchNorm statistics, no dropout; the caller's mode comes back (the trainer evaluates mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def embed_images(
    model: nn.Module, images: Iterable[np.ndarray], *, image_size: int, batch_size: int = 128,
    flip: bool = False, device: torch.device | str = "cpu", progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings, embeddings of the mirrored images or None), each (n, D) float32, not normalised.

    Images are (H, W, 3) uint8 RGB, resized to ``image_size`` when needed and mapped to [-1, 1]
    as in training; the model runs in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plain, mirrored = [], []
    with _eval_mode(model):
        for batch in _batches(images, batch_size=batch_size, image_size=image_size):
            plain.append(model(to_float_chw(batch).to(device)).float().cpu().numpy())
            if flip:
                mirrored.append(model(to_float_chw(batch[:, :, ::-1]).to(device)).float().cpu().numpy())
            if progress is not None:
                progress.update(len(batch))
    if not plain:
        raise ValueError("no images to embed")
    return np.concatenate(plain), (np.concatenate(mirrored) if flip else None)


@torch.no_grad()
def embed_indexed(
    model: nn.Module, image_at: Callable[[int], np.ndarray], count: int, *, image_size: int, batch_size: int = 128,
    flip: bool = False, device: torch.device | str = "cpu", comm: Collectives | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``embed_images`` of ``image_at(0) ... image_at(count - 1)``, identical on every rank.

    With ``comm``, rank r embeds images [r·m, (r+1)·m) (m = ceil(count / world size)) and one
    all-gather of the (m, D or 2D) padded slices assembles them; every rank must call it.
    """
    if comm is None or comm.world_size == 1:
        return embed_images(model, (image_at(k) for k in range(count)), image_size=image_size,
                            batch_size=batch_size, flip=flip, device=device, progress=progress)
    per_rank = -(-count // comm.world_size)
    lo, hi = min(count, comm.rank * per_rank), min(count, (comm.rank + 1) * per_rank)
    if hi > lo:
        emb, flipped = embed_images(model, (image_at(k) for k in range(lo, hi)), image_size=image_size,
                                    batch_size=batch_size, flip=flip, device=device, progress=progress)
        local = torch.from_numpy(np.concatenate([emb, flipped], axis=1) if flip else emb)
    else:  # more ranks than images: this rank only pads, but must know the width
        with _eval_mode(model):
            dim = int(model(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
        local = torch.zeros(0, 2 * dim if flip else dim)
    padded = torch.zeros(per_rank, local.shape[1], device=device)
    padded[: local.shape[0]] = local.to(device)
    gathered = comm.all_gather(padded)[:count].cpu().numpy()
    if not flip:
        return gathered, None
    half = gathered.shape[1] // 2
    return gathered[:, :half], gathered[:, half:]
