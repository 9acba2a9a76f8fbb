"""Sub-center ArcFace, AdaFace, CurricularFace and MagFace in the sharded head: loss, gradients
and running statistics equal the fp64 per-sample oracle (tests/reference.py) at world sizes
1-3 with an uneven class count; sampled steps are world-size invariant; each new transform
passes gradcheck; the running statistics checkpoint with the head."""

from __future__ import annotations

import math

import pytest
import torch

from partial_fc import PartialFC, margins
from partial_fc.head.sharded_ce import target_logits
from tests import reference
from tests.distributed import at_world_sizes
from tests.head.cases import INIT_STD, SEED, global_batch
from tests.head.sampling_oracle import sampled_classes

C, D, B, CHUNK = 301, 8, 12, 40  # 301 = 7 * 43: uneven shards at 2 and 3 ranks; several tiles per rank
RATE, STEP = 0.4, 3
PARAMS: dict[str, dict] = {
    "subcenter_arcface": {"scale": 16.0, "margin_rad": 0.5, "subcenters": 3},
    "adaface": {"scale": 16.0, "margin": 0.4, "h": 0.333, "t_alpha": 0.5},  # 0.5: both EMA terms matter
    "curricularface": {"scale": 16.0, "margin_rad": 0.5},
    "magface": {"scale": 16.0},
}
# Running statistics before the step: away from the priors (20, 100; t = 0) so the adaptive
# scaler and the hard-negative reweighting are both active.
INITIAL = {"adaface": {"mean": 3.0, "std": 1.5}, "curricularface": {"t": 0.3}}
BUFFERS = {"adaface": {"mean": "batch_mean", "std": "batch_std"}, "curricularface": {"t": "t"}}
MAG_SCALE = 25.0  # MagFace norms in ~[10, 125]: most inside [l_a, u_a], a few clamped


def batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, labels = global_batch(C, D, B)
    return (x * MAG_SCALE if name == "magface" else x), labels


def make_head(name: str, rate: float) -> PartialFC:
    head = PartialFC(C, D, margin=margins.build(name, **PARAMS[name]), sample_rate=rate, seed=SEED,
                     chunk_size=CHUNK, init_std=INIT_STD, backbone_grad_average=False).double()
    head.step = STEP
    for key, value in INITIAL.get(name, {}).items():
        getattr(head.margin, BUFFERS[name][key]).fill_(value)
    return head


def head_results(rank: int, world_size: int) -> dict:
    b = B // world_size
    out = {}
    for rate in (1.0, RATE):
        for name in PARAMS:
            head = make_head(name, rate)
            x, labels = batch(name)
            x_local = x[rank * b : (rank + 1) * b].clone().requires_grad_()
            loss = head(x_local, labels[rank * b : (rank + 1) * b])
            loss.backward()
            out[name, rate] = {
                "loss": loss.detach(), "grad_x": x_local.grad, "weight": head.weight.detach(),
                "grad_w": head.weight.grad.to_dense(),
                "state": {k: float(getattr(head.margin, v)) for k, v in BUFFERS.get(name, {}).items()},
            }
    return out


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    return at_world_sizes(head_results)


def assemble(per_rank: list[dict], key) -> dict:
    return {
        "losses": [r[key]["loss"] for r in per_rank], "states": [r[key]["state"] for r in per_rank],
        "grad_x": torch.cat([r[key]["grad_x"] for r in per_rank]),
        "weight": torch.cat([r[key]["weight"] for r in per_rank]),
        "grad_w": torch.cat([r[key]["grad_w"] for r in per_rank]),
    }


_REFERENCE_CACHE: dict = {}


def reference_grads(name: str, weight: torch.Tensor, classes=None):
    """Cached: the weight is identical at every world size (asserted bit-exactly below)."""
    key = (name, None if classes is None else tuple(classes[0]), weight.numpy().tobytes())
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = _reference_grads(name, weight, classes)
    return _REFERENCE_CACHE[key]


def _reference_grads(name: str, weight: torch.Tensor, classes=None):
    x, labels = batch(name)
    x = x.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, state = reference.modern_loss(name, PARAMS[name], x, w, labels, state=INITIAL.get(name), classes=classes)
    loss.backward()
    return loss.detach(), x.grad, w.grad, state


# fp64 on both sides. The head sums exponentials tile by tile and across ranks in another order
# than torch.logsumexp, and computes cos(theta + m) as cos cos m - sin sin m where the oracle
# uses arccos then cos: both move results by ~1e-14 relative. 1e-9 is far below any formula,
# scaling or missing-derivative error (those show up at >= 1e-4) and far above rounding noise.
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("name", list(PARAMS))
def test_full_softmax_matches_dense_fp64_reference(results, world_size, name):
    got = assemble(results[world_size], (name, 1.0))
    ref_loss, ref_gx, ref_gw, ref_state = reference_grads(name, got["weight"])
    for loss in got["losses"]:  # the same value on every rank (MagFace: regulariser included)
        torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(got["grad_x"], ref_gx, **TOL)
    torch.testing.assert_close(got["grad_w"], ref_gw, **TOL)  # every row, every sub-center
    for state in got["states"]:
        assert state == got["states"][0]  # bit-identical running statistics on every rank
        assert state.keys() == ref_state.keys() - {"_"}
        for key in state:
            assert state[key] == pytest.approx(ref_state[key], rel=1e-12)


@pytest.mark.parametrize("name", list(PARAMS))
def test_sampled_softmax_matches_reference_on_the_sampled_classes(results, name):
    got = assemble(results[1], (name, RATE))
    _, labels = batch(name)
    kept = sampled_classes(SEED, STEP, C, RATE, positives=labels.tolist())
    ref_loss, ref_gx, ref_gw, _ = reference_grads(name, got["weight"], classes=[kept] * B)
    torch.testing.assert_close(got["losses"][0], ref_loss, **TOL)
    torch.testing.assert_close(got["grad_x"], ref_gx, **TOL)
    torch.testing.assert_close(got["grad_w"], ref_gw, **TOL)
    k = PARAMS[name].get("subcenters", 1)
    unsampled_rows = [c * k + j for c in sorted(set(range(C)) - set(kept)) for j in range(k)]
    assert torch.count_nonzero(got["grad_w"][unsampled_rows]) == 0


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("name", list(PARAMS))
def test_sampled_softmax_is_world_size_invariant(results, world_size, name):
    one, many = assemble(results[1], (name, RATE)), assemble(results[world_size], (name, RATE))
    torch.testing.assert_close(many["weight"], one["weight"], rtol=0, atol=0)  # rows from (seed, row id)
    for loss in many["losses"]:
        torch.testing.assert_close(loss, one["losses"][0], **TOL)
    torch.testing.assert_close(many["grad_x"], one["grad_x"], **TOL)
    torch.testing.assert_close(many["grad_w"], one["grad_w"], **TOL)
    for state in many["states"]:
        assert state == pytest.approx(one["states"][0], rel=1e-12)


def _inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(n, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    return g, cos


def test_subcenter_target_passes_gradcheck():
    margin = margins.build("subcenter_arcface", **PARAMS["subcenter_arcface"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: target_logits(margin, a, b, 0), (x, w))


def test_adaface_target_passes_gradcheck():
    margin = margins.build("adaface", **PARAMS["adaface"]).double()
    g, cos = _inputs(16)
    x_norm = torch.rand(16, generator=g, dtype=torch.float64) * 4 + 1
    state = {"mean": torch.tensor(3.0, dtype=torch.float64), "std": torch.tensor(1.5, dtype=torch.float64)}
    # The norm enters detached (paper, official code): gradient only through cos theta.
    fn = lambda c: margin.target_logit(c, x_norm=x_norm.requires_grad_(), w_norm=x_norm, step=0, state=state)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cos,))
    assert torch.autograd.grad(fn(cos).sum(), x_norm, allow_unused=True)[0] is None


def test_curricularface_negative_transform_and_its_derivative():
    margin = margins.build("curricularface", **PARAMS["curricularface"]).double()
    g, _ = _inputs(1)
    z = (torch.rand(7, 5, generator=g, dtype=torch.float64) * 1.8 - 0.9) * margin.scale
    state = {"t": torch.tensor(0.3, dtype=torch.float64), "threshold": torch.tensor([-0.5, 0.0, 0.3, 0.6, 0.95], dtype=torch.float64)}
    z = z.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: margin.negative_logits(v, state)[0], (z,))
    out, deriv = margin.negative_logits(z, state)
    (auto,) = torch.autograd.grad(out.sum(), z)  # elementwise, so the sum's gradient is the diagonal
    torch.testing.assert_close(deriv, auto, rtol=1e-15, atol=1e-15)
    hard = z.detach() / margin.scale > state["threshold"]
    assert 0 < int(hard.sum()) < hard.numel()  # both branches exercised


def test_magface_target_and_regulariser_pass_gradcheck():
    margin = margins.build("magface", **PARAMS["magface"])
    g, cos = _inputs(16)
    x_norm = (torch.rand(16, generator=g, dtype=torch.float64) * 90 + 15).requires_grad_()
    fn = lambda c, n: margin.target_logit(c, x_norm=n, w_norm=n, step=0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cos, x_norm))
    x = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 30).requires_grad_()
    assert torch.autograd.gradcheck(margin.regularizer, (x,))


@pytest.mark.parametrize("name", list(PARAMS))
def test_whole_head_passes_gradcheck(name):
    chunk = 8 * PARAMS[name].get("subcenters", 1)  # 8 classes a tile: several tiles, kept and recomputed
    head = PartialFC(37, 5, margin=margins.build(name, **PARAMS[name]), chunk_size=chunk, init_std=0.5).double()
    for key, value in INITIAL.get(name, {}).items():
        getattr(head.margin, BUFFERS[name][key]).fill_(value)
    head.eval()  # fixed statistics across gradcheck's repeated evaluations
    if name == "adaface":
        # The norm enters the margin detached (by design), which a finite difference in x would
        # see; a tiny std clips every scaler to +-1, where the true derivative in |x| is zero too.
        head.margin.batch_std.fill_(1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * (MAG_SCALE if name == "magface" else 1.0)
    labels = torch.tensor([0, 36, 5, 5, 20, 11])
    # Kept vs recomputed tiles: identical math, different rounding (~1e-16) between evaluations.
    assert torch.autograd.gradcheck(lambda e: head(e, labels), (x.requires_grad_(),), nondet_tol=1e-12)


@pytest.mark.parametrize("name", ["adaface", "curricularface"])
def test_running_statistics_update_in_training_only_and_round_trip(name):
    head = make_head(name, 1.0)
    x, labels = batch(name)
    head.eval()
    before = {k: v.clone() for k, v in head.state_dict().items() if k != "_extra_state"}
    head(x, labels)
    for key in BUFFERS[name].values():
        assert torch.equal(head.state_dict()[f"margin.{key}"], before[f"margin.{key}"])
    head.train()
    head(x, labels)
    saved = head.state_dict()
    for key in BUFFERS[name].values():
        assert not torch.equal(saved[f"margin.{key}"], before[f"margin.{key}"])
    fresh = PartialFC(C, D, margin=margins.build(name, **PARAMS[name]), seed=SEED, chunk_size=CHUNK).double()
    fresh.load_state_dict(saved)
    for key, value in saved.items():
        if key != "_extra_state":
            assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.step == head.step


def test_registry_and_paper_defaults():
    sub, ada = margins.build("subcenter_arcface"), margins.build("adaface")
    cur, mag = margins.build("curricularface"), margins.build("magface")
    assert (sub.scale, sub.margin_rad, sub.subcenters) == (64.0, 0.5, 3)
    assert (ada.scale, ada.margin, ada.h, ada.t_alpha, ada.eps) == (64.0, 0.4, 0.333, 0.01, 1e-3)
    assert (float(ada.batch_mean), float(ada.batch_std)) == (20.0, 100.0)
    assert (cur.scale, cur.margin_rad, cur.momentum, float(cur.t)) == (64.0, 0.5, 0.01, 0.0)
    assert (mag.scale, mag.l_a, mag.u_a, mag.l_m_rad, mag.u_m_rad, mag.lambda_g) == (64.0, 10.0, 110.0, 0.45, 0.8, 35.0)
    assert float(mag.margin_rad(torch.tensor(60.0))) == pytest.approx(0.45 + 0.35 * 0.5)
    head = PartialFC(10, 4, margin="subcenter_arcface")
    assert head.weight.shape == (30, 4) and head.class_range == (0, 10)
    assert torch.equal(head.weight[6:9], PartialFC(30, 4, margin="arcface").weight[6:9])  # row id, not class id
    assert math.isclose(float(cur.t), 0.0)


@pytest.mark.parametrize("name,params,match", [
    ("subcenter_arcface", {"subcenters": 0}, "subcenters"), ("adaface", {"t_alpha": 0.0}, "t_alpha"),
    ("curricularface", {"momentum": 2.0}, "momentum"), ("magface", {"l_a": 120.0}, "l_a"),
])
def test_bad_parameters_name_the_value(name, params, match):
    with pytest.raises(ValueError, match=match):
        margins.build(name, **params)
