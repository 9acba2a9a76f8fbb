"""Stochastic rounding: counter-based noise (deterministic, a function of seed, step, row and
column alone, uniform), unbiased rounding to bf16 / fp16, and what it buys over round-to-nearest.

Statistical bounds. Rounding x stochastically gives lo or hi = lo + gap, hi with probability
p = (x - lo) / gap, independently at every step (each step draws fresh row keys). The mean of T
roundings therefore has standard deviation gap sqrt(p (1 - p) / T), and we require every mean
within 5 of those sigmas of x (plus the fp32 slack of an exactly representable x: none), and
the sum of all deviations within 5 sigma of 0. A two-sided 5-sigma excursion has probability
6e-7 per element; the noise is fixed by the seeds, so the outcome never changes between runs,
and a biased rounding (round-to-nearest, checked below) fails the same test by hundreds of sigma.
"""

from __future__ import annotations

import pytest
import torch

from partial_fc.head.hashing import splitmix64, splitmix64_int
from partial_fc.optim import RowSparseSGD
from partial_fc.optim.stochastic_round import (column_salt, element_noise, round_bf16_bits, round_fp16, row_keys,
                                               step_key)


def noise_at(step: int, rows: torch.Tensor, dim: int, *, seed: int = 0, streams: int = 1, lane: int = 0) -> torch.Tensor:
    keys = row_keys(step_key(seed, step), rows, streams)[:, lane]
    return element_noise(keys, column_salt(dim, rows.device), torch.empty(rows.numel(), dim, dtype=torch.int32))


def test_row_keys_are_splitmix64_of_the_row_counter():
    rows = torch.tensor([0, 5, 123456789], dtype=torch.int64)
    key = step_key(7, 3)
    keys = row_keys(key, rows, 2)
    for i, r in enumerate(rows.tolist()):
        for s in range(2):
            expected = splitmix64_int((key + r * 2 + s) & ((1 << 64) - 1)) & 0xFFFFFFFF
            assert keys[i, s].item() & 0xFFFFFFFF == expected
    assert torch.equal(splitmix64(rows), splitmix64(rows.clone()))


def test_noise_depends_on_seed_step_row_and_column_alone():
    rows = torch.tensor([3, 70, 11, 5000])
    together = noise_at(4, rows, 24)
    for i, r in enumerate(rows.tolist()):  # the same row alone, in another block, gives the same noise
        assert torch.equal(noise_at(4, torch.tensor([r]), 24)[0], together[i])
    assert torch.equal(noise_at(4, rows, 24), together)  # deterministic
    for other in (noise_at(5, rows, 24), noise_at(4, rows, 24, seed=1), noise_at(4, rows + 1, 24)):
        assert (other == together).float().mean() < 0.01  # a different counter is different noise


def test_noise_top_bits_are_uniform_and_uncorrelated():
    n, dim = 4096, 64
    top = (noise_at(0, torch.arange(n), dim).double() / 2.0 ** 32 + 0.5)  # in [0, 1)
    count = top.numel()
    # mean of U(0, 1): 1/2 with sd sqrt(1/12 / N); correlations: sd 1/sqrt(pairs)
    assert abs(top.mean().item() - 0.5) < 5 * (1 / 12 / count) ** 0.5
    centred = top - 0.5
    following = noise_at(1, torch.arange(n), dim).double() / 2.0 ** 32  # the same elements, one step later
    pairs = ((centred[:, 1:], centred[:, :-1]), (centred[1:], centred[:-1]), (centred[:, 7:], centred[:, :-7]),
             (centred, following))
    for a, b in pairs:
        corr = (a * b).mean().item() * 12  # the product of two independent centred U(0, 1) has sd 1/12
        assert abs(corr) < 5 / a.numel() ** 0.5


def _neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 (lo, hi): the values of ``dtype`` around fp32 x (both x when it is representable)."""
    near = x.to(dtype)
    toward = torch.where(near.double() < x.double(), float("inf"), float("-inf")).to(dtype)
    other = torch.where(near.double() == x.double(), near, torch.nextafter(near, toward))
    return torch.minimum(near, other).double(), torch.maximum(near, other).double()


def _check_unbiased(x: torch.Tensor, round_fn, dtype: torch.dtype, steps: int) -> None:
    rows = torch.arange(x.shape[0])
    total = torch.zeros_like(x, dtype=torch.float64)
    for t in range(steps):
        total += round_fn(x, noise_at(t, rows, x.shape[1])).double()
    mean = total / steps
    lo, hi = _neighbours(x, dtype)
    gap = hi - lo
    p = ((x.double() - lo) / torch.where(gap > 0, gap, 1)).clamp(0, 1)
    sigma = torch.where(gap > 0, gap, 0) * (p * (1 - p) / steps).sqrt()
    assert bool(((mean - x.double()).abs() <= 5 * sigma).all()), ((mean - x.double()).abs() / sigma).nan_to_num().max()
    z = (mean - x.double()).sum() / sigma.square().sum().sqrt()
    assert abs(z.item()) < 5


def _bf16(x, noise):
    return round_bf16_bits(x, noise, torch.empty_like(x, dtype=torch.int32)).contiguous().view(torch.bfloat16)


def _values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mags = torch.exp(torch.empty(32, 16).uniform_(-20, 5, generator=g))
    signs = torch.where(torch.rand(32, 16, generator=g) < 0.5, -1.0, 1.0)
    x = (mags * signs).float()
    x[0, :4] = torch.tensor([1.0, -2.0, 0.0, 0.5])  # exactly representable: must stay exact
    return x


def test_bf16_stochastic_rounding_is_unbiased():
    _check_unbiased(_values(), _bf16, torch.bfloat16, steps=4000)


def test_fp16_stochastic_rounding_is_unbiased_normal_and_subnormal():
    x = _values().clamp(-60000, 60000)
    x[1] = torch.linspace(-2e-7, 3e-7, 16)  # fp16 subnormals (step 6e-8) and below
    _check_unbiased(x, lambda v, noise: round_fp16(v.clone(), noise, torch.empty_like(v, dtype=torch.float16)),
                    torch.float16, steps=4000)


def test_the_unbiasedness_check_rejects_round_to_nearest():
    x = torch.full((4, 8), 1.0 + 2.0 ** -10)  # 1/8 of a bf16 ulp above 1: nearest is always 1
    lo, hi = _neighbours(x, torch.bfloat16)
    assert torch.equal(x.to(torch.bfloat16).double(), lo)  # round-to-nearest: a bias of gap/8, sd 0
    with pytest.raises(AssertionError):
        _check_unbiased(x, lambda v, noise: v.to(torch.bfloat16), torch.bfloat16, steps=2000)
    with pytest.raises(AssertionError):  # nor a stochastic rounding biased by 1/32 of an ulp
        _check_unbiased(x, lambda v, noise: _bf16(v + 2.0 ** -12, noise), torch.bfloat16, steps=2000)
    _check_unbiased(x, _bf16, torch.bfloat16, steps=2000)


def test_bf16_round_to_nearest_loses_small_updates_stochastic_rounding_keeps_them():
    """Each step adds 2^-11 to weights of 1.0, a sixteenth of bf16's ulp there (2^-7)."""
    rows, dim, steps, update = 64, 32, 512, 2.0 ** -11
    p = torch.nn.Parameter(torch.ones(rows, dim, dtype=torch.bfloat16))
    opt = RowSparseSGD([p], lr=1.0)
    nearest = torch.ones(rows, dim, dtype=torch.bfloat16)
    for _ in range(steps):
        p.grad = torch.full((rows, dim), -update, dtype=torch.bfloat16)  # exactly representable
        opt.step()
        nearest = (nearest.float() + update).to(torch.bfloat16)
    exact = 1.0 + steps * update  # 1.25
    assert torch.equal(nearest, torch.ones_like(nearest))  # every update lost
    # SR: each step adds an independent zero-mean error of sd <= ulp/2 = 2^-8 (ulp <= 2^-7 below 2),
    # so an element's final error has sd <= 2^-8 sqrt(steps) and the mean over the elements
    # sd <= 2^-8 sqrt(steps / elements): 5 of those are 0.0097
    bound = 5 * 2.0 ** -8 * (steps / p.numel()) ** 0.5
    assert abs(p.detach().double().mean().item() - exact) < bound
    assert p.detach().double().std().item() < 4 * 2.0 ** -8 * steps ** 0.5  # no element runs away


def test_rounding_nearest_is_round_to_nearest_and_loses_the_small_updates():
    """The ablation switch: the same optimizer with rounding="nearest" stores what torch's own
    bf16 conversion stores (round-to-nearest; ties here are impossible: x = 1 + 2^-11 is 1/16
    ulp from 1), so the 1/16-ulp updates of the test above are all lost."""
    rows, dim, steps, update = 16, 32, 64, 2.0 ** -11
    p = torch.nn.Parameter(torch.ones(rows, dim, dtype=torch.bfloat16))
    opt = RowSparseSGD([p], lr=1.0, rounding="nearest")
    for _ in range(steps):
        p.grad = torch.full((rows, dim), -update, dtype=torch.bfloat16)
        opt.step()
    assert torch.equal(p.detach(), torch.ones_like(p))
    # away from the 1/16-ulp case: every stored value equals torch's round-to-nearest of the fp32 result
    w0 = torch.randn(rows, dim)
    p = torch.nn.Parameter(w0.to(torch.bfloat16))
    g = torch.randn(rows, dim).to(torch.bfloat16)
    opt = RowSparseSGD([p], lr=0.01, rounding="nearest")
    p.grad = g.clone()
    opt.step()
    expected = (w0.to(torch.bfloat16).float() - 0.01 * g.float()).to(torch.bfloat16)
    assert torch.equal(p.detach(), expected)


def test_rounding_nearest_int8_momentum_is_the_nearest_code():
    """int8 momentum under rounding="nearest": q = round(m / s) exactly (no noise), so the
    round-trip error is below half a step of the row's scale, not one step."""
    rows, dim = 8, 64
    p = torch.nn.Parameter(torch.zeros(rows, dim))
    opt = RowSparseSGD([p], lr=0.1, momentum=0.9, state_dtype="int8", rounding="nearest")
    g = torch.randn(rows, dim)
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    scale = state["momentum_buffer_scale"]
    decoded = state["momentum_buffer_int8"].float() * scale[:, None]
    assert torch.equal(state["momentum_buffer_int8"].float(), torch.round(g / scale[:, None]))
    assert bool(((decoded - g).abs() <= scale[:, None] / 2 + 1e-7).all())
