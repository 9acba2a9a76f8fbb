"""Mining picks exactly the triplets the loop oracle picks, also when the anchors are split in
blocks as the ranks split them."""

from __future__ import annotations

import pytest
import torch

from partial_fc.losses import mine_triplets
from tests.losses import oracle
from tests.losses.cases import B, global_batch


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("strategy, fallback", [("semihard", "hardest"), ("semihard", "easiest"),
                                                ("batch_hard", "hardest"), ("batch_all", "hardest")])
def test_mined_triplets_equal_the_oracle(world_size, strategy, fallback):
    x, labels = global_batch()
    e = torch.nn.functional.normalize(x, dim=1)
    b = B // world_size
    got = []
    for rank in range(world_size):
        ids = torch.arange(rank * b, (rank + 1) * b)
        dist = (2 - 2 * e[ids] @ e.t()).clamp_min(0)
        # block_bytes=1 forces one anchor per block: the blocking must not change the result
        got += [tuple(t) for t in mine_triplets(dist, labels, ids, strategy=strategy, margin=0.2, fallback=fallback,
                                                block_bytes=1).tolist()]
    expected = oracle.mined_triplets(x, labels.tolist(), strategy, 0.2, fallback)
    assert expected, "the oracle must select something on this batch"
    assert sorted(got) == expected


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="choose from"):
        mine_triplets(torch.zeros(2, 2), torch.tensor([0, 1]), torch.arange(2), strategy="hard", margin=0.2)
