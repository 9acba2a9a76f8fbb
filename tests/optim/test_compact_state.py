"""Compact class-center state: the fused fp32 path equals the unfused original bit for bit; 8-bit
states round-trip within their stated bounds and without bias; every mode saves and resumes
exactly; rows are rounded the same on 1, 2 and 3 real gloo ranks."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC
from partial_fc.head.ranges import class_range
from partial_fc.optim import RowSparseAdamW, RowSparseSGD, bytes_per_row, store_weight_as
from partial_fc.optim.quantized import NonNegativeCodeState, SignedInt8State
from partial_fc.optim.scratch import Scratch
from partial_fc.optim.stochastic_round import column_salt, element_noise, row_keys, step_key
from tests.distributed import run_ranks
from tests.optim.unfused_reference import UnfusedAdamW, UnfusedSGD

SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
ADAM_KW = dict(lr=1e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
MODES = [(cls, kw, dtype, state) for cls, kw in ((RowSparseSGD, SGD_KW), (RowSparseAdamW, ADAM_KW))
         for dtype in (torch.float32, torch.bfloat16, torch.float16) for state in ("fp32", "bf16", "int8")]


def sparse_steps(rows: int, dim: int, steps: int, *, seed: int = 0, fraction: float = 0.3):
    """Sorted unique sampled rows and their fp32 gradient values, per step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = (torch.rand(rows, generator=g) < fraction).nonzero().squeeze(1)
        out.append((idx, torch.randn(idx.numel(), dim, generator=g) * 1e-2))
    return out


def apply(opt, p, steps):
    for idx, values in steps:
        p.grad = torch.sparse_coo_tensor(idx[None], values.to(p.dtype), p.shape, is_coalesced=True, check_invariants=True)
        opt.step()


@pytest.mark.parametrize("dim,block_rows", [(512, 4096), (512, 50), (37, 16)])
@pytest.mark.parametrize("ours,reference,kwargs", [
    (RowSparseSGD, UnfusedSGD, SGD_KW), (RowSparseSGD, UnfusedSGD, dict(SGD_KW, nesterov=True)),
    (RowSparseSGD, UnfusedSGD, dict(lr=0.5)), (RowSparseAdamW, UnfusedAdamW, ADAM_KW)])
def test_fp32_mode_is_bit_identical_to_the_unfused_optimizer(ours, reference, kwargs, dim, block_rows):
    torch.manual_seed(0)
    init = torch.randn(300, dim) * 0.05
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_a, opt_b = ours([a], block_rows=block_rows, **kwargs), reference([b], block_rows=block_rows, **kwargs)
    steps = sparse_steps(300, dim, 5)
    apply(opt_a, a, steps)
    apply(opt_b, b, steps)
    a.grad = b.grad = torch.randn(300, dim) * 1e-2  # and a dense step (every row)
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)
    for key, value in opt_b.state[b].items():
        assert torch.equal(opt_a.state[a][key], value), key


def _codec_trials(fmt, x: torch.Tensor, trials: int) -> torch.Tensor:
    """(trials, n, D) decoded values of ``x`` written with fresh noise each time."""
    n, dim = x.shape
    scratch, state = Scratch(), fmt.create("s", x)
    rows, salt = torch.arange(n), column_salt(dim, x.device)
    out = []
    for t in range(trials):
        noise = element_noise(row_keys(step_key(0, t), rows, 1)[:, 0], salt, torch.empty(n, dim, dtype=torch.int32))
        fmt.write(state, "s", rows, 0, n, x, noise, scratch)
        out.append(fmt.read(state, "s", rows, 0, n, torch.empty_like(x), scratch).clone())
    return torch.stack(out)


def _row_data(signed: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 64, generator=g) * torch.logspace(-6, 2, 6)[:, None]
    x[1, :32] *= 1e-4  # a row with a wide dynamic range
    x[2] = 0.0  # an all-zero row
    x[3, 5] = 0.0
    return x if signed else x.square()


def test_int8_momentum_round_trips_within_one_step_without_bias():
    x = _row_data(signed=True)
    decoded = _codec_trials(SignedInt8State(), x, 1500).double()
    step = x.abs().amax(1, keepdim=True).double() * (1 + 2.0 ** -20) / 127  # s = absmax (1 + 2^-20) / 127
    # |q s - x| < s (stochastic rounding picks one of the two neighbouring levels); fp32 slack 1e-6 s
    assert bool(((decoded - x.double()).abs() <= step * (1 + 1e-6)).all())
    assert torch.equal(decoded[:, 2], torch.zeros_like(decoded[:, 2]))
    # unbiased: the mean of T decodings is within 5 sigma, sigma <= s / (2 sqrt(T)) (Bernoulli on a gap s)
    err = decoded.mean(0) - x.double()
    assert bool((err.abs() <= 5 * step / (2 * 1500 ** 0.5) + 1e-7 * step).all())
    assert (decoded[:, 0] == x[0].double()).float().mean() < 1  # not a lossless copy: it does quantise
    # round-to-nearest bound for comparison: the row's smallest entries (below s/2) would all be 0
    small = x[1].abs() < step[1] / 2
    assert small.any() and bool((decoded[:, 1].mean(0)[small].abs() > 0).any())


def test_int8_second_moment_code_round_trips_within_an_eighth_without_bias():
    v = _row_data(signed=False)
    v[4, 0] = v[4].amax() * 2.0 ** -40  # below the code's 30 binades: the linear band
    decoded = _codec_trials(NonNegativeCodeState(), v, 1500).double()
    vd, rowmax = v.double(), v.double().amax(1, keepdim=True)
    floor = rowmax * 2.0 ** -30
    bound = torch.where(vd >= floor, vd / 8, rowmax * 2.0 ** -33)  # one code gap
    assert bool(((decoded - vd).abs() <= bound * (1 + 1e-5)).all())
    assert bool((decoded >= 0).all())
    assert torch.equal(decoded[:, 2], torch.zeros_like(decoded[:, 2]))  # zero stays exactly zero
    assert torch.equal(decoded[:, torch.arange(6), v.argmax(1)], vd[torch.arange(6), v.argmax(1)].expand(1500, 6))
    err = decoded.mean(0) - vd
    assert bool((err.abs() <= 5 * bound / (2 * 1500 ** 0.5) + 1e-6 * vd).all())
    # the dynamic range a linear absmax code lacks: entries 10^-4 below the row max keep ~1/8 precision
    wide = v[1, :32].double()
    assert bool(((decoded[:, 1, :32].mean(0) - wide).abs() <= wide / 8).all())


@pytest.mark.parametrize("cls,kw,dtype,state", MODES)
def test_every_mode_trains_only_sampled_rows_and_resumes_exactly(cls, kw, dtype, state, tmp_path):
    torch.manual_seed(1)
    init = (torch.randn(40, 24) * 0.05).to(dtype)
    p = torch.nn.Parameter(init.clone())
    opt = cls([p], state_dtype=state, seed=3, block_rows=7, **kw)
    steps = sparse_steps(40, 24, 6, fraction=0.25)
    touched = torch.zeros(40, dtype=torch.bool)
    for idx, _ in steps[:3]:
        touched[idx] = True
    apply(opt, p, steps[:3])
    assert torch.equal(p.detach()[~touched], init[~touched])
    for key, value in opt.state[p].items():
        assert value.shape[0] == 40, key  # per-row: the checkpoint resharder splits it like the weight
        assert torch.count_nonzero(value[~touched]) == 0, key

    torch.save({"w": p.detach(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    q = torch.nn.Parameter(loaded["w"].clone())
    resumed = cls([q], state_dtype=state, seed=3, block_rows=7, **kw)
    resumed.load_state_dict(loaded["opt"])
    for key, value in opt.state[p].items():
        assert resumed.state[q][key].dtype == value.dtype and torch.equal(resumed.state[q][key], value), key
    apply(opt, p, steps[3:])
    apply(resumed, q, steps[3:])
    assert torch.equal(p, q)  # including the noise: its step count is part of the state dict
    for key, value in opt.state[p].items():
        assert torch.equal(resumed.state[q][key], value), key


def _decoded(opt, p) -> dict[str, torch.Tensor]:
    """Every state of ``p`` decoded to fp64, whatever its format."""
    state, n = opt.state[p], p.shape[0]
    return {name: fmt.read(state, name, None, 0, n, torch.empty(p.shape), Scratch()).double()
            for name, fmt in opt._formats.items()}


def _format_bound(state_dtype: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """The stated round-trip bound of storing fp64 values x (rows, D) as ``state_dtype``."""
    if state_dtype == "fp32":
        return torch.zeros_like(x)
    if state_dtype == "bf16":
        return x.abs() * 2.0 ** -7  # under one ulp
    if name == "exp_avg_sq":
        rowmax = x.amax(1, keepdim=True)
        return torch.maximum(x / 8, rowmax * 2.0 ** -33) * (1 + 1e-5)
    return x.abs().amax(1, keepdim=True).expand_as(x) * (1 + 2.0 ** -20) / 127 * (1 + 1e-6)


@pytest.mark.parametrize("cls,kw", [(RowSparseSGD, SGD_KW), (RowSparseAdamW, ADAM_KW)])
@pytest.mark.parametrize("src,dst", [("fp32", "int8"), ("int8", "fp32"), ("bf16", "int8"), ("int8", "bf16"), ("fp32", "bf16")])
def test_a_state_saved_with_another_state_dtype_is_converted(cls, kw, src, dst):
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(40, 24) * 0.05)
    opt = cls([p], state_dtype=src, **kw)
    steps = sparse_steps(40, 24, 4, fraction=0.5)
    apply(opt, p, steps[:3])
    q = torch.nn.Parameter(p.detach().clone())
    other = cls([q], state_dtype=dst, **kw)
    other.load_state_dict(opt.state_dict())
    assert other.conversions == [f"parameter 0: optimizer state converted from {src} to state_dtype={dst!r}"]
    before, after = _decoded(opt, p), _decoded(other, q)
    for name, value in before.items():
        assert bool(((after[name] - value).abs() <= _format_bound(dst, name, value)).all()), name
    if cls is RowSparseAdamW:
        assert torch.equal(other.state[q]["row_steps"], opt.state[p]["row_steps"])
    fresh = cls([torch.nn.Parameter(q.detach().clone())], state_dtype=dst, **kw)
    assert {k: v.dtype for k, v in other.state[q].items()} == {k: v.dtype for k, v in fresh._create_state(q).items()}
    apply(other, q, steps[3:])  # and it trains on in its own format


def test_a_state_set_directly_in_another_format_is_converted_at_the_next_step():
    """Checkpoint loaders may assign ``optimizer.state`` without ``load_state_dict``."""
    p = torch.nn.Parameter(torch.zeros(4, 8))
    opt = RowSparseSGD([p], state_dtype="int8", **SGD_KW)
    opt.state[p] = {"momentum_buffer": torch.full((4, 8), 0.5)}
    apply(opt, p, sparse_steps(4, 8, 1, fraction=1.0))
    assert opt.conversions == ["parameter of shape (4, 8): optimizer state converted from fp32 to state_dtype='int8'"]
    assert set(opt.state[p]) == {"momentum_buffer_int8", "momentum_buffer_scale"}


def test_a_state_in_no_known_format_is_an_error():
    p = torch.nn.Parameter(torch.zeros(4, 8))
    opt = RowSparseSGD([p], state_dtype="int8", **SGD_KW)
    opt.state[p] = {"velocity": torch.zeros(4, 8)}
    with pytest.raises(ValueError, match=r"holds \['velocity \(torch.float32\)'\], in no format of state_dtype"):
        apply(opt, p, sparse_steps(4, 8, 1, fraction=1.0))


@pytest.mark.parametrize("cls,kw,dtype,state", MODES)
def test_bytes_per_row_is_what_the_optimizer_allocates(cls, kw, dtype, state):
    p = torch.nn.Parameter(torch.zeros(10, 24, dtype=dtype))
    opt = cls([p], state_dtype=state, **kw)
    apply(opt, p, sparse_steps(10, 24, 1))
    allocated = p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in opt.state[p].values())
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    optim = "sgd" if cls is RowSparseSGD else "adamw"
    assert bytes_per_row(dim=24, optim=optim, weight_dtype=names[dtype], state_dtype=state) * 10 == allocated


def test_bytes_per_row_at_d512():
    assert bytes_per_row(dim=512) == 4096 and bytes_per_row(dim=512, momentum=False) == 2048
    assert bytes_per_row(dim=512, weight_dtype="bf16", state_dtype="int8") == 1540
    assert bytes_per_row(dim=512, optim="adamw") == 6148
    assert bytes_per_row(dim=512, optim="adamw", weight_dtype="bf16", state_dtype="int8") == 2060
    with pytest.raises(ValueError, match="optim must be one of"):
        bytes_per_row(dim=512, optim="lamb")


def test_persistent_bytes_per_class_with_bf16_weights_and_int8_momentum():
    dim = 512
    p = torch.nn.Parameter(torch.zeros(10, dim, dtype=torch.bfloat16))
    opt = RowSparseSGD([p], state_dtype="int8", **SGD_KW)
    apply(opt, p, sparse_steps(10, dim, 1))
    state_bytes = sum(t.numel() * t.element_size() for t in opt.state[p].values())
    assert (p.numel() * p.element_size() + state_bytes) / 10 == 3 * dim + 4  # 1540 B, against 4096 in fp32


@pytest.mark.parametrize("kwargs,match", [
    (dict(state_dtype="fp8"), "state_dtype must be one of"), (dict(row_offset=-1), "row_offset must be"),
    (dict(block_rows=0), "block_rows must be"), (dict(rounding="up"), "rounding must be one of")])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RowSparseSGD([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, **kwargs)


def test_compact_modes_need_a_2d_fp32_bf16_or_fp16_parameter():
    with pytest.raises(ValueError, match="needs a 2-D"):
        RowSparseSGD([torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))], lr=0.1, state_dtype="int8")
    with pytest.raises(ValueError, match="parameter dtype must be one of"):
        RowSparseSGD([torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))], lr=0.1)


CONFIGS = [("sgd", "int8", True), ("adamw", "int8", True), ("sgd", "bf16", True), ("sgd", "int8", False)]


def _shard_run(rank: int, world_size: int, num_rows: int, dim: int) -> dict:
    """This rank's shard of a (num_rows, dim) bf16 weight and its state after a few global
    sparse steps, for each of CONFIGS (the last with local row ids: row_offset 0 everywhere)."""
    import torch.distributed as dist

    start, stop = class_range(num_rows, world_size, rank)
    results = {}
    for cls_name, state, global_ids in CONFIGS:
        cls, kw = (RowSparseSGD, SGD_KW) if cls_name == "sgd" else (RowSparseAdamW, ADAM_KW)
        torch.manual_seed(0)
        p = torch.nn.Parameter((torch.randn(num_rows, dim) * 0.05)[start:stop].to(torch.bfloat16))
        opt = cls([p], state_dtype=state, seed=11, row_offset=start if global_ids else 0, block_rows=5, **kw)
        for idx, values in sparse_steps(num_rows, dim, 4, fraction=0.5):
            mine = (idx >= start) & (idx < stop)
            p.grad = torch.sparse_coo_tensor((idx[mine] - start)[None], values[mine].to(torch.bfloat16), p.shape,
                                             is_coalesced=True, check_invariants=True)
            opt.step()
        results[(cls_name, state, global_ids)] = {"weight": p.detach(), **opt.state[p]}
    if dist.is_initialized():
        dist.barrier()  # a real group: every rank ran every configuration
    return results


def test_rows_are_rounded_the_same_on_one_two_and_three_ranks():
    num_rows, dim = 23, 20  # uneven shards; D not a multiple of 8
    runs = {1: [_shard_run(0, 1, num_rows, dim)]}
    for world_size in (2, 3):
        runs[world_size] = run_ranks(_shard_run, world_size, num_rows, dim)
    whole = {n: {c: {k: torch.cat([shard[c][k] for shard in shards]) for k in shards[0][c]} for c in CONFIGS}
             for n, shards in runs.items()}
    for config in CONFIGS[:-1]:
        for world_size in (2, 3):
            for key, value in whole[1][config].items():
                assert torch.equal(whole[world_size][config][key], value), (config, world_size, key)
    # the check can fail: with local row ids the shards' noise, hence their rounding, differs
    assert not torch.equal(whole[2][CONFIGS[-1]]["weight"], whole[1][CONFIGS[-1]]["weight"])


def test_a_bf16_head_computes_in_fp32():
    """The head widens bf16 rows into its fp32 tiles: the loss equals that of an fp32 head holding
    the same (bf16-representable) values, bit for bit; the gradient arrives in bf16."""
    torch.manual_seed(0)
    wide = PartialFC(300, 16, margin="arcface", sample_rate=0.5)
    narrow = PartialFC(300, 16, margin="arcface", sample_rate=0.5)
    wide.weight.data = wide.weight.data.to(torch.bfloat16).float()  # the same values, stored in fp32
    store_weight_as(narrow.weight, "bf16")
    assert torch.equal(narrow.weight.float(), wide.weight)
    x, y = torch.randn(8, 16), torch.randint(0, 300, (8,))
    loss_wide, loss_narrow = wide(x, y), narrow(x, y)
    assert loss_narrow.dtype == torch.float32 and torch.equal(loss_wide, loss_narrow)
    loss_wide.backward()
    loss_narrow.backward()
    assert narrow.weight.grad.dtype == torch.bfloat16
    assert torch.equal(narrow.weight.grad.to_dense(), wide.weight.grad.to_dense().to(torch.bfloat16))
    opt = RowSparseSGD([narrow.weight], state_dtype="int8", **SGD_KW)
    opt.step()
    assert narrow.weight.dtype == torch.bfloat16


def test_store_weight_as_names_the_choices():
    with pytest.raises(ValueError, match=r"storage dtype must be one of \['fp32', 'bf16', 'fp16'\], got 'int8'"):
        store_weight_as(torch.nn.Parameter(torch.zeros(2, 2)), "int8")
