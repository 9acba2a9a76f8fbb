"""The fused CPU kernels (partial_fc.kernels) against fp64 references, kernel by kernel; the
same bits at 1 and 2 threads; and the build's errors. The head and the optimizer built on
them: tests/kernels/test_fused_step.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from partial_fc import kernels

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason=f"fused CPU kernels unavailable: {kernels.why_unavailable()}")

# fp32 kernels against fp64 of the same fp32 inputs: one rounding per stored result, a few in
# the dot products (16 lanes of d / 16 terms each, then 16 lane sums), so a few ulp (6e-8 each).
ULP = 2.0 ** -24


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dim", [16, 37, 512])  # 37: the dot products' scalar tail
def test_gather_rows_copies_exactly_and_norms_within_a_few_ulp(dim):
    src = torch.randn(300, dim, generator=_gen())
    src[5] = 0.0  # the norm's floor: 1 / 1e-12
    idx = torch.tensor([0, 5, 7, 8, 150, 299])
    out, inv = torch.empty(6, dim), torch.empty(6)
    kernels.gather_rows(src, idx, out, inv)
    assert torch.equal(out, src[idx])
    want = 1.0 / src[idx].double().norm(dim=1).clamp_min(1e-12)
    torch.testing.assert_close(inv.double(), want, rtol=8 * ULP, atol=0)
    norms_only = torch.empty(300)
    kernels.gather_rows(src, None, None, norms_only)
    torch.testing.assert_close(norms_only.double(), 1.0 / src.double().norm(dim=1).clamp_min(1e-12), rtol=8 * ULP, atol=0)
    narrow = src.to(torch.bfloat16)
    kernels.gather_rows(narrow, idx, out, None)
    assert torch.equal(out, narrow[idx].float())  # widening bf16 is exact


def test_scale_colmax_is_exact():
    z = torch.randn(333, 70, generator=_gen(1)) * 20
    scale = torch.rand(333, generator=_gen(2)) + 0.5
    colmax = torch.empty(70)
    got = z.clone()
    kernels.scale_colmax(got, scale, colmax)
    assert torch.equal(got, z * scale[:, None])  # one fp32 product each, as torch's
    assert torch.equal(colmax, got.amax(0))
    kernels.scale_colmax(got, None, colmax)
    assert torch.equal(colmax, got.amax(0))
    # block by block, accumulating: the same bits as one pass (a max is exact)
    blocks, running = z.clone(), torch.full((70,), float("-inf"))
    for lo in range(0, 333, 50):
        kernels.scale_colmax(blocks[lo:lo + 50], scale[lo:lo + 50], running, accumulate=True)
    assert torch.equal(blocks, z * scale[:, None])
    assert torch.equal(running, blocks.amax(0))


def test_exp_shift_within_two_ulp_and_sums_within_the_bound():
    # the exponential's own error is <= 2 ulp over its range (polynomial + 2^k, both in fp32);
    # inputs are exact differences here so nothing else rounds
    x = torch.linspace(-87.0, 88.0, 200_001)
    e = x[None].clone()
    kernels.exp_shift(e, torch.zeros(x.numel()), None)
    rel = (e[0].double() - x.double().exp()).abs() / x.double().exp()
    assert rel.max() <= 2.5 * 2 * ULP
    z = torch.randn(5000, 40, generator=_gen(3)) * 8
    shift = z.amax(0)
    sums = torch.empty(40)
    kernels.exp_shift(z, shift, sums)
    ref = torch.exp(torch.randn(5000, 40, generator=_gen(3)).double() * 8 - shift.double())
    # z - shift is rounded once in fp32 (|z| <= 40: 2^-19 absolute), then exp: relative 2^-19 + 2 ulp
    torch.testing.assert_close(z.double(), ref, rtol=2.0 ** -18, atol=1e-30)
    # two-level sums of 5000 terms: blocks of 128, then 40 partials; relative error < 200 ulp
    torch.testing.assert_close(sums.double(), z.double().sum(0), rtol=200 * ULP, atol=0)


def test_exp_shift_without_storing_sums_the_same_bits_and_leaves_the_tile():
    z = torch.randn(700, 33, generator=_gen(13)) * 8
    shift = z.amax(0)
    kept, stored = z.clone(), z.clone()
    sums, sums_stored = torch.empty(33), torch.empty(33)
    kernels.exp_shift(kept, shift, sums, store=False)
    kernels.exp_shift(stored, shift, sums_stored)
    assert torch.equal(kept, z)
    assert torch.equal(sums, sums_stored)
    with pytest.raises(ValueError, match="store=False needs colsum"):
        kernels.exp_shift(kept, shift, None, store=False)


def test_scale_tile_with_the_exponential_into_another_buffer_is_exp_shift_then_scale_tile():
    z = torch.randn(300, 50, generator=_gen(14)) * 6
    shift, row, col = z.amax(0), torch.rand(300, generator=_gen(15)) + 0.1, torch.rand(50, generator=_gen(16)) + 0.1
    two_passes = z.clone()
    kernels.exp_shift(two_passes, shift, None)
    kernels.scale_tile(two_passes, row, col)
    out, before = torch.empty(300, 50), z.clone()
    kernels.scale_tile(z, row, col, shift=shift, out=out)
    assert torch.equal(out, two_passes)  # the same exponential and products, bit for bit
    assert torch.equal(z, before)  # the source is only read
    kernels.scale_tile(z, row, col, shift=shift)  # in place
    assert torch.equal(z, two_passes)
    with pytest.raises(ValueError, match=r"row_scale must hold 300 values for a \(300, 50\) tile, got 299"):
        kernels.scale_tile(z, row[:299], col)
    with pytest.raises(ValueError, match=r"out must be shaped like z \(300, 50\)"):
        kernels.scale_tile(z, row, col, out=torch.empty(299, 50))


def test_scale_tile_and_projection_against_fp64():
    z = torch.randn(300, 50, generator=_gen(4))
    row, col = torch.rand(300, generator=_gen(5)) + 0.1, torch.rand(50, generator=_gen(6)) + 0.1
    got = z.clone()
    kernels.scale_tile(got, row, col)
    torch.testing.assert_close(got.double(), z.double() * col.double() * row.double()[:, None], rtol=3 * ULP, atol=0)
    g, w = torch.randn(300, 37, generator=_gen(7)), torch.randn(300, 37, generator=_gen(8))
    inv = (1.0 / w.double().norm(dim=1)).float()
    want = g.double() - ((w.double() * g.double()).sum(1) * inv.double() ** 2)[:, None] * w.double()
    got = g.clone()
    kernels.project_rows(got, w, inv)
    # the dot of 37 products (|w||g| ~ 37) rounds at ~1e-6 absolute; the result's entries are ~1
    torch.testing.assert_close(got.double(), want, rtol=0, atol=4e-6)
    assert (got.double() * w.double()).sum(1).abs().max() < 1e-4  # orthogonal to w


def test_the_same_bits_at_one_and_two_threads():
    def run():
        w = torch.randn(5000, 64, generator=_gen(9))
        m = torch.randn(5000, 64, generator=_gen(10))
        g = torch.randn(2000, 64, generator=_gen(11))
        idx = torch.arange(0, 5000, 5).repeat_interleave(2)[:2000] + torch.arange(2000) % 2  # 2000 distinct rows
        kernels.sgd_rows(w, m, g, idx, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False)
        z = torch.randn(2000, 96, generator=_gen(12))
        mx, sums, inv = torch.empty(96), torch.empty(96), torch.empty(2000)
        rows = torch.empty(2000, 64)
        kernels.gather_rows(w, idx, rows, inv)
        kernels.scale_colmax(z, inv, mx)
        kernels.exp_shift(z, mx, sums)
        kernels.project_rows(g, rows, inv)
        return w, m, z, mx, sums, g, inv

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_wrong_tensors_are_refused_with_their_names():
    w = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="g must be a contiguous CPU torch.float32"):
        kernels.sgd_rows(w, None, torch.zeros(4, 8, dtype=torch.float64), None, lr=0.1, momentum=0.0,
                         weight_decay=0.0, nesterov=False)
    with pytest.raises(ValueError, match="idx must be a contiguous CPU torch.int64"):
        kernels.gather_rows(w, torch.tensor([0, 1], dtype=torch.int32), torch.empty(2, 8), None)
    with pytest.raises(ValueError, match=r"idx must be in \[0, 4\) for w, got \[0, 4\]"):
        kernels.sgd_rows(w, None, torch.zeros(2, 8), torch.tensor([0, 4]), lr=0.1, momentum=0.0, weight_decay=0.0,
                         nesterov=False)
    with pytest.raises(ValueError, match="idx must hold 3 row ids"):
        kernels.sgd_rows(w, None, torch.zeros(3, 8), torch.tensor([0, 1]), lr=0.1, momentum=0.0, weight_decay=0.0,
                         nesterov=False)


def _probe(env: dict) -> subprocess.CompletedProcess:
    code = "from partial_fc import kernels; print(kernels.describe())"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_a_failing_compiler_leaves_the_eager_path_with_the_reason(tmp_path):
    fresh = {"PARTIAL_FC_KERNEL_DIR": str(tmp_path), "CC": "false"}  # an empty cache: a build is tried
    done = _probe(fresh)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("eager torch ops (") and "failed on" in done.stdout and "cpu.c" in done.stdout
    assert not list(tmp_path.iterdir())  # nothing half-written
    required = _probe({**fresh, "PARTIAL_FC_KERNELS": "on"})
    assert required.returncode != 0 and "PARTIAL_FC_KERNELS=on, but the fused CPU kernels cannot be built" in required.stderr
    off = _probe({"PARTIAL_FC_KERNELS": "off"})
    assert off.stdout.strip() == "eager torch ops (PARTIAL_FC_KERNELS=off)"
    bad = _probe({"PARTIAL_FC_KERNELS": "maybe"})
    assert bad.returncode != 0 and "PARTIAL_FC_KERNELS must be one of ['auto', 'on', 'off'], got 'maybe'" in bad.stderr


def test_a_build_lands_in_the_cache_directory_once(tmp_path):
    done = _probe({"PARTIAL_FC_KERNEL_DIR": str(tmp_path)})
    assert done.stdout.strip() == "fused CPU kernels", done.stderr
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("cpu-") and built[0].suffix == ".so"
    again = _probe({"PARTIAL_FC_KERNEL_DIR": str(tmp_path)})
    assert again.stdout.strip() == "fused CPU kernels" and list(tmp_path.iterdir()) == built


def test_to_bf16_is_torchs_cast_bit_for_bit():
    x = torch.randn(100_000, generator=_gen(13)) * torch.logspace(-40, 38, 100_000)
    ties = (torch.arange(1, 2000, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)  # exactly halfway
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3.3895e38, -3.3895e38, 1e-45])
    for src in (x, ties, special):
        out = torch.empty(src.shape, dtype=torch.bfloat16)
        kernels.to_bf16(src, out)
        assert torch.equal(out.view(torch.int16), src.to(torch.bfloat16).view(torch.int16))
    nan = torch.empty(1, dtype=torch.bfloat16)
    kernels.to_bf16(torch.tensor([float("nan")]), nan)  # torch's own NaN pattern differs by path
    assert nan.isnan().all()
