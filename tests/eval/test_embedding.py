"""The one embedding path: image order, flip, resize and eval mode; the same embeddings and
pair metrics on 1 and on 4 real gloo ranks (uneven slices, one rank with no image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from partial_fc.comm import ProcessGroupCollectives
from partial_fc.data.formats.pairs import PairSet
from partial_fc.eval.embedding import embed_images, embed_indexed
from partial_fc.eval.model_eval import evaluate_pairs, score_pairs
from partial_fc.metrics.verification import flip_sum_normalize, verify_scores
from tests.distributed import run_ranks


class Pixels(nn.Module):
    """The input itself as the embedding, so the embedding path's images can be read back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _net() -> nn.Module:
    torch.manual_seed(0)  # same weights on every rank
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(8))


def _images(n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_embed_images_keeps_order_flips_resizes_and_restores_train_mode() -> None:
    images = _images(5)
    model = Pixels().train()
    emb, flipped = embed_images(model, iter(images), image_size=8, batch_size=2, flip=True)
    assert model.training  # the caller's mode comes back
    chw = images.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0  # [-1, 1] as in training
    np.testing.assert_allclose(emb, chw.reshape(5, -1), atol=1e-6)  # float32 of k / 127.5 - 1
    np.testing.assert_allclose(flipped, chw[..., ::-1].reshape(5, -1), atol=1e-6)  # mirrored along the width
    plain, none = embed_images(model, iter(images), image_size=4, batch_size=3)
    assert none is None and plain.shape == (5, 3 * 4 * 4)
    with pytest.raises(ValueError, match="no images to embed"):
        embed_images(model, iter([]), image_size=8)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        embed_images(model, iter(images), image_size=8, batch_size=0)


def test_embed_images_uses_running_batchnorm_statistics() -> None:
    model = _net()
    images = _images(6)
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    one, _ = embed_images(model, iter(images), image_size=8, batch_size=1)
    six, _ = embed_images(model, iter(images), image_size=8, batch_size=6)
    # In eval mode a row does not depend on its batch; float32 kernels differ by batch size ~1e-7.
    np.testing.assert_allclose(one, six, rtol=0, atol=1e-5)


def _pairs() -> PairSet:
    return PairSet(name="t", images=_images(20), issame=np.arange(10) % 2 == 0)


def _on_rank(rank: int, world_size: int, pairs: PairSet) -> dict:
    comm = ProcessGroupCollectives()
    model = _net()
    model(torch.zeros(1, 3, 8, 8))
    five = embed_indexed(model, pairs.image, 5, image_size=8, batch_size=2, flip=True, comm=comm)
    result = evaluate_pairs(model, pairs, image_size=8, batch_size=3, flip=False, device="cpu", n_folds=5,
                            comm=comm, progress=False)
    # Results travel as tensors (the rank queue loads with weights_only).
    return {"five": [torch.from_numpy(a) for a in five], "scores": torch.from_numpy(result.scores),
            "accuracy": result.verification.accuracy_mean}


def test_ranks_embed_slices_and_agree_with_one_process() -> None:
    pairs = _pairs()
    ranks = [{"five": [t.numpy() for t in r["five"]], "scores": r["scores"].numpy(), "accuracy": r["accuracy"]}
             for r in run_ranks(_on_rank, 4, pairs)]  # 5 images over 4 ranks: slices 2, 2, 1 and 0
    model = _net()
    model(torch.zeros(1, 3, 8, 8))
    emb, flipped = embed_images(model, (pairs.image(k) for k in range(5)), image_size=8, batch_size=5, flip=True)
    unit = flip_sum_normalize(*embed_images(model, (pairs.image(k) for k in range(20)), image_size=8))
    scores = (unit[0::2] * unit[1::2]).sum(axis=1)  # float64 oracle of the pair cosine
    for got in ranks:
        # float32 forward passes in different batch splits: ~1e-7 apart.
        np.testing.assert_allclose(got["five"][0], emb, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["five"][1], flipped, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["scores"], scores, rtol=0, atol=1e-5)
        assert got["accuracy"] == verify_scores(got["scores"], pairs.issame, n_folds=5).accuracy_mean
    assert all(np.array_equal(r["scores"], ranks[0]["scores"]) for r in ranks)  # identical on every rank


def test_score_pairs_needs_two_rows_per_pair() -> None:
    pairs = _pairs()
    with pytest.raises(ValueError, match="t: 19 embeddings for 10 pairs, expected 20"):
        score_pairs(np.ones((19, 4)), pairs)
