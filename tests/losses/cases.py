"""The global batch and the loss configurations the distributed tests run."""

from __future__ import annotations

import torch

B, D, C, CHUNK = 12, 4, 7, 2   # B divisible by 1, 2, 3; C = 7 gives uneven agent shards; 4 chunks of 2
SEED = 3

# name -> (module kind, kwargs); margins chosen so each case has active and inactive terms
CASES = {
    "semihard": ("triplet", dict(mining="semihard", margin=0.2)),
    "semihard_easiest": ("triplet", dict(mining="semihard", margin=0.2, semihard_fallback="easiest")),
    "batch_hard": ("triplet", dict(mining="batch_hard", margin=0.2)),
    "batch_all": ("triplet", dict(mining="batch_all", margin=0.2)),
    "contrastive": ("contrastive", dict(margin=1.0)),
    "c_contrastive": ("c_contrastive", dict(margin=2.0)),
    "c_contrastive_default": ("c_contrastive", dict()),
    "c_triplet": ("c_triplet", dict(margin=0.3, negatives="hardest")),
    "c_triplet_default": ("c_triplet", dict(negatives="hardest")),
}


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 0, 1])[torch.randperm(B, generator=g)]
    return x, labels
