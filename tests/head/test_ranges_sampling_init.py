"""Class ranges, the counter-based hash, sampling statistics and (seed, c)-only init."""

from __future__ import annotations

import math

import pytest
import torch

from partial_fc.head.hashing import splitmix64, splitmix64_int, uniform_below, stream_key
from partial_fc.head.row_init import BLOCK_ROWS, init_class_rows
from partial_fc.head.ranges import class_range
from partial_fc.head.sampling import sample_classes
from tests.head import sampling_oracle


@pytest.mark.parametrize("num_classes,world_size", [(1003, 1), (1003, 2), (1003, 3), (1003, 4), (8, 8), (10, 3), (7, 4)])
def test_class_ranges_partition_and_balance(num_classes, world_size):
    ranges = [class_range(num_classes, world_size, r) for r in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("args,match", [((0, 1, 0), "num_classes"), ((5, 0, 0), "world_size"),
                                        ((5, 2, 2), "rank"), ((3, 4, 0), "at least one class")])
def test_class_range_errors_name_the_value(args, match):
    with pytest.raises(ValueError, match=match):
        class_range(*args)


def test_torch_splitmix64_is_bit_exact_with_the_integer_definition():
    values = [0, 1, 2, 12345, 2**31, 2**62, 2**63 - 1, -1, -(2**63), -987654321]
    got = splitmix64(torch.tensor(values, dtype=torch.int64)).tolist()
    for v, g in zip(values, got):
        assert g & ((1 << 64) - 1) == sampling_oracle.splitmix64(v & ((1 << 64) - 1)) == splitmix64_int(v & ((1 << 64) - 1))


def test_keep_mask_matches_the_pure_python_rule():
    key = stream_key(11, sampling_oracle.SAMPLE_TAG, 5)
    mask = uniform_below(key, 0, 3000, 0.2, block=1000).tolist()  # several blocks
    assert mask == [sampling_oracle.keep(11, 5, c, 0.2) for c in range(3000)]


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_kept_fraction_within_binomial_bounds_and_positives_always_kept(rate):
    n = 200_000
    positives = torch.tensor([0, 17, 99_999, 150_000, n - 1])
    sampled = sample_classes(positives, start=0, stop=n, seed=3, step=9, sample_rate=rate)
    rows = set(sampled.rows.tolist())
    assert set(positives.tolist()) <= rows
    assert sampled.target_pos.tolist() == [sampled.rows.tolist().index(p) for p in positives.tolist()]
    negatives_kept = len(rows - set(positives.tolist()))
    sigma = math.sqrt(n * rate * (1 - rate))
    # 5 sigma: a correct sampler fails this with probability ~6e-7
    assert abs(negatives_kept - rate * (n - len(positives))) < 5 * sigma


def test_sampling_differs_between_steps_and_seeds_and_labels_of_other_ranks_map_to_minus_one():
    labels = torch.tensor([5, 50, 500])
    a = sample_classes(labels, start=0, stop=100, seed=1, step=0, sample_rate=0.3)
    b = sample_classes(labels, start=0, stop=100, seed=1, step=1, sample_rate=0.3)
    c = sample_classes(labels, start=0, stop=100, seed=2, step=0, sample_rate=0.3)
    assert a.rows.tolist() != b.rows.tolist() and a.rows.tolist() != c.rows.tolist()
    assert a.target_pos[2] == -1 and a.target_pos[0] >= 0


@pytest.mark.parametrize("start,stop", [(0, 10), (BLOCK_ROWS - 3, BLOCK_ROWS + 5), (2 * BLOCK_ROWS + 1, 3 * BLOCK_ROWS + 2)])
def test_init_rows_depend_on_seed_and_class_only(start, stop):
    full = init_class_rows(4, 0, 3 * BLOCK_ROWS + 10, 6, std=1.0)
    torch.testing.assert_close(init_class_rows(4, start, stop, 6, std=1.0), full[start:stop], rtol=0, atol=0)
    assert not torch.equal(init_class_rows(5, start, stop, 6, std=1.0), full[start:stop])
    assert abs(full.std().item() - 1.0) < 0.02
