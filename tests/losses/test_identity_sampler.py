"""The identity-balanced sampler gives P x K batches of the right identities, disjoint across
ranks within a step, deterministic from (seed, epoch, rank)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from partial_fc.data.loaders.identity_sampler import IdentityBalancedSampler

# 40 identities; identity c has 1 + c % 6 images, in shuffled sample order
_COUNTS = [1 + c % 6 for c in range(40)]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(40), _COUNTS))


def batches(**kwargs):
    return list(IdentityBalancedSampler(LABELS, **kwargs))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batches_are_p_identities_times_k_images(world_size):
    p, k = 3, 4
    eligible = {c for c in range(40) if _COUNTS[c] >= k}
    per_rank = [batches(p=p, k=k, rank=r, world_size=world_size, seed=7) for r in range(world_size)]
    assert all(len(b) == len(eligible) // (p * world_size) for b in per_rank) and per_rank[0]
    seen = []
    for step in range(len(per_rank[0])):
        step_ids = []
        for r in range(world_size):
            batch = per_rank[r][step]
            assert len(batch) == p * k and len(set(batch)) == p * k  # no image twice: drawn without replacement
            counts = Counter(int(LABELS[i]) for i in batch)
            assert len(counts) == p and set(counts.values()) == {k}
            assert set(counts) <= eligible  # identities with fewer than k images are skipped
            step_ids += list(counts)
        assert len(step_ids) == len(set(step_ids))  # disjoint across ranks within the step
        seen += step_ids
    assert len(seen) == len(set(seen))  # and within the epoch


def test_deterministic_from_seed_epoch_rank_and_images_independent_of_world_size():
    a = IdentityBalancedSampler(LABELS, p=2, k=3, seed=1)
    b = IdentityBalancedSampler(LABELS, p=2, k=3, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert batches(p=2, k=3, seed=1) != batches(p=2, k=3, seed=2)
    # the same identity gets the same k images at any world size (seeded by identity)
    one = {int(LABELS[b[0]]): sorted(b[:3]) for b in batches(p=1, k=3, seed=1)}
    two = {int(LABELS[b[0]]): sorted(b[:3]) for r in range(2) for b in batches(p=1, k=3, seed=1, rank=r, world_size=2)}
    assert all(one[c] == imgs for c, imgs in two.items() if c in one)


def test_replace_keeps_small_identities_and_draws_with_replacement():
    got = batches(p=4, k=5, small_identities="replace", seed=3)
    ids = Counter(int(LABELS[i]) for b in got for i in b)
    assert any(_COUNTS[c] < 5 for c in ids)
    for b in got:
        for j in range(4):
            images = b[j * 5 : (j + 1) * 5]
            c = int(LABELS[images[0]])
            assert all(int(LABELS[i]) == c for i in images)
            if _COUNTS[c] < 5:
                assert len(set(images)) <= _COUNTS[c]


@pytest.mark.parametrize("kwargs, match", [
    (dict(p=0, k=2), "p must"), (dict(p=2, k=2, rank=2, world_size=2), "rank"),
    (dict(p=2, k=2, small_identities="pad"), "small_identities"), (dict(p=30, k=6), "lower p or k"),
])
def test_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IdentityBalancedSampler(LABELS, **kwargs)
