"""The head and the row-sparse SGD on the fused CPU kernels: the fused update stores the same
bits as the eager blocks in every storage format; the fused fp32 head equals the fp64 head
(itself held to the dense fp64 reference in tests/head) at world sizes 1 and 2, for every
margin the fused tiles take, and the others keep the eager path."""

from __future__ import annotations

import itertools

import pytest
import torch

from partial_fc import PartialFC, kernels, margins
from partial_fc.head import sharded_ce
from partial_fc.head.sharded_ce import _fused
from partial_fc.optim import RowSparseSGD, store_weight_as
from tests.distributed import at_world_sizes
from tests.head.cases import INIT_STD, MARGINS, SEED, STEP, global_batch

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason=f"fused CPU kernels unavailable: {kernels.why_unavailable()}")

CONFIGS = [(w, s, mu, wd, nesterov) for w, s, mu, wd, nesterov in
           itertools.product(("fp32", "bf16"), ("fp32", "bf16", "int8"), (0.0, 0.9), (0.0, 5e-4), (False, True))
           if mu or not nesterov]


def _train(weights: str, state: str, mu: float, wd: float, nesterov: bool, *, fused: bool,
           rounding: str = "stochastic") -> tuple[torch.Tensor, dict, int]:
    rows, dim, picked = 900, 40, 300  # 40: not a multiple of the 16-float vectors
    p = torch.nn.Parameter(torch.randn(rows, dim, generator=torch.Generator().manual_seed(1)) * 0.05)
    store_weight_as(p, weights)
    opt = RowSparseSGD([p], lr=0.1, momentum=mu, weight_decay=wd, nesterov=nesterov, state_dtype=state, seed=3,
                       row_offset=17, rounding=rounding)
    calls = []
    wrapped = {name: getattr(kernels, name) for name in ("sgd_rows", "sgd_compact")}
    try:
        for name, fn in wrapped.items():  # count the fused calls; the kernels themselves run
            setattr(kernels, name, lambda *a, _fn=fn, _name=name, **k: (calls.append(_name), _fn(*a, **k))[1])
        with kernels.enabled_as(fused):
            for step in range(3):
                g = torch.Generator().manual_seed(10 + step)
                ids = torch.sort(torch.randperm(rows, generator=g)[:picked]).values
                values = (torch.randn(picked, dim, generator=g) * 1e-2).to(p.dtype)
                p.grad = torch.sparse_coo_tensor(ids[None], values, p.shape, is_coalesced=True, check_invariants=False)
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        for name, fn in wrapped.items():
            setattr(kernels, name, fn)
    return p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}, len(calls)


@pytest.mark.parametrize("weights, state, mu, wd, nesterov", CONFIGS)
def test_the_fused_update_stores_the_eager_bits(weights, state, mu, wd, nesterov):
    """Same operations in the same order, the same counter-based noise: equal bit for bit."""
    w_fused, s_fused, calls = _train(weights, state, mu, wd, nesterov, fused=True)
    w_eager, s_eager, none = _train(weights, state, mu, wd, nesterov, fused=False)
    assert calls == 3 and none == 0  # every step took the fused pass, and none with the kernels off
    assert torch.equal(w_fused, w_eager)
    assert s_fused.keys() == s_eager.keys()
    for key, value in s_fused.items():
        assert torch.equal(value, s_eager[key]), key


@pytest.mark.parametrize("weights, rounding", [("bf16", "nearest"), ("fp16", "stochastic")])
def test_rounding_to_nearest_and_fp16_keep_the_eager_update(weights, rounding):
    _, _, calls = _train(weights, "bf16", 0.9, 5e-4, False, fused=True, rounding=rounding)
    assert calls == 0


C, D, B = 1003, 40, 12
RATES = (1.0, 0.3)  # every class (tiles are views of the shard) and sampled (gathered rows)


BLOCK_ROWS = 7  # gathered rows per block in the "blocks" runs: several per 97-row tile, the last one short


KINDS = ("fp32", "blocks", "fp64", "bf16", "bf16-blocks", "fp64-of-bf16")


def _head(kind: str, name: str, params: dict, rate: float) -> PartialFC:
    """fp32 / fp64 heads, bf16 rows, and the fp64 head holding the same values as the bf16 one."""
    def build(**extra):
        return PartialFC(C, D, margin=margins.build(name, **params), sample_rate=rate, seed=SEED, chunk_size=97,
                         init_std=INIT_STD, backbone_grad_average=False, **extra)
    if kind in ("fp32", "blocks"):
        return build()
    if kind == "fp64":
        return build().double()
    narrow = build(state_dtype="bf16")
    if kind != "fp64-of-bf16":
        return narrow
    head = build().double()
    with torch.no_grad():
        head.weight.copy_(narrow.weight.double())
    return head


def _head_results(rank: int, world_size: int) -> dict:
    x, labels = global_batch(C, D, B)
    b = B // world_size
    out = {}
    default_block = sharded_ce.GATHER_BLOCK_BYTES
    try:
        for (name, params), rate, kind in itertools.product(MARGINS.items(), RATES, KINDS):
            sharded_ce.GATHER_BLOCK_BYTES = BLOCK_ROWS * 4 * D if kind.endswith("blocks") else default_block
            head = _head(kind, name, params, rate)
            head.step = STEP
            dtype = torch.float64 if kind.startswith("fp64") else torch.float32
            x_local = x[rank * b:(rank + 1) * b].to(dtype).requires_grad_()
            loss = head(x_local, labels[rank * b:(rank + 1) * b])
            loss.backward()
            out[name, rate, kind] = {"loss": loss.detach().double(), "grad_x": x_local.grad.double(),
                                     "grad_w": head.weight.grad.to_dense().double(),
                                     "fused": _fused(x_local.detach(), head.weight, head.margin),
                                     "block_rows": sharded_ce.gather_block_rows(D)}
    finally:
        sharded_ce.GATHER_BLOCK_BYTES = default_block
    return out


def _takes_fused(name: str) -> bool:
    margin = margins.build(name, **MARGINS[name])
    return margin.subcenters == 1 and not margin.transforms_negatives


@pytest.fixture(scope="module")
def heads() -> dict[int, list[dict]]:
    return at_world_sizes(_head_results, (1, 2))


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", list(MARGINS))
@pytest.mark.parametrize("kind", ["fp32", "blocks"])
def test_the_fused_fp32_head_equals_the_fp64_head(heads, world_size, rate, name, kind):
    """kind "blocks": the tile's rows gathered BLOCK_ROWS at a time (both GEMMs and the
    projection per block in the backward), as large shards run them."""
    ranks = heads[world_size]
    assert all(r[name, rate, kind]["fused"] == _takes_fused(name) for r in ranks)
    assert not any(r[name, rate, "fp64"]["fused"] for r in ranks)  # fp64: the eager path, the reference here
    for r in ranks:  # the default: one block per 97-row tile at D = 40
        block_rows = r[name, rate, kind]["block_rows"]
        assert block_rows == BLOCK_ROWS if kind == "blocks" else block_rows >= 97
    # fp32 against fp64: logits up to s = 16 carry ~16 x 2^-24 each, the sums of 10^3 terms a few
    # times that; the loss (~5) and gradients (<= 1) then agree to ~1e-5 relative, 1e-6 absolute
    for r in ranks:
        ours, ref = r[name, rate, kind], r[name, rate, "fp64"]
        torch.testing.assert_close(ours["loss"], ref["loss"], rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(ours["grad_x"], ref["grad_x"], rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(ours["grad_w"], ref["grad_w"], rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", list(MARGINS))
@pytest.mark.parametrize("kind", ["bf16", "bf16-blocks"])
def test_the_fused_bf16_head_equals_the_fp64_head_of_its_values(heads, world_size, rate, name, kind):
    """bf16 rows widened into fp32 blocks (one per tile, or BLOCK_ROWS at a time): the fp32
    tolerances above for the loss and the embedding gradient; the class-row gradient is stored
    in bf16 (rounded to nearest, 2^-9 relative), so within two of its ulps."""
    ranks = heads[world_size]
    for r in ranks:
        ours, ref = r[name, rate, kind], r[name, rate, "fp64-of-bf16"]
        assert ours["fused"] == _takes_fused(name)
        torch.testing.assert_close(ours["loss"], ref["loss"], rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(ours["grad_x"], ref["grad_x"], rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(ours["grad_w"], ref["grad_w"], rtol=2 ** -7, atol=2e-6)
