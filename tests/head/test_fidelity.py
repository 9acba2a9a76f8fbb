"""Targets where random batches never go, through the real sharded head at world sizes 1-3
against the fp64 oracle: angles past pi - m (the ArcFace / Combined / CurricularFace / MagFace
fallbacks), every branch k of SphereFace's and L-Softmax's psi, both sides of MagFace's easy
margin. Plus psi's values on each branch and the margins' documented defaults."""

from __future__ import annotations

import math

import pytest
import torch

from partial_fc import PartialFC, margins
from partial_fc.head.margins.angular import psi
from tests import reference
from tests.distributed import at_world_sizes
from tests.head.cases import INIT_STD, SEED, batch_at_angles, full_weight, global_batch

C, D, B, CHUNK = 301, 8, 12, 40  # uneven shards at 2 and 3 ranks; several tiles per rank
STEP = 3
# Two per psi branch of m = 4 (k = 0..3, away from the branch ends k pi/4), then four past
# theta_t of every fallback: pi - 0.5 (ArcFace, CurricularFace), (pi - 0.4)/0.9 = pi - 0.0955
# (Combined), pi - m(a) >= pi - 0.8 (MagFace).
THETAS = [0.1, 0.5, 0.9, 1.2, 1.7, 2.0, 2.4, 2.7, math.pi - 0.085, math.pi - 0.06, math.pi - 0.04, math.pi - 0.02]
NORMS = [0.6 + 0.2 * i for i in range(B)]
MAG_NORMS = [5.0, 12.0, 20.0, 30.0, 45.0, 60.0, 75.0, 90.0, 100.0, 108.0, 115.0, 130.0]  # both clamps of [10, 110]
CASES: dict[str, tuple[str, dict]] = {
    "arcface": ("arcface", {"scale": 16.0, "margin_rad": 0.5}),
    "combined": ("combined", {"scale": 16.0, "m1": 0.9, "m2_rad": 0.4, "m3": 0.15}),
    "curricularface": ("curricularface", {"scale": 16.0, "margin_rad": 0.5}),
    "magface": ("magface", {"scale": 16.0}),  # easy margin, the official default
    "magface_no_easy": ("magface", {"scale": 16.0, "easy_margin": False}),
    "sphereface": ("sphereface", {"m": 4, "lambda_base": 0.0}),  # psi alone: no cos blend to hide it
    "lsoftmax": ("lsoftmax", {"m": 3, "lambda_base": 0.0}),
}
MODERN = {"curricularface", "magface"}
CURRICULAR_T = 0.3  # away from 0 so the hard negatives are reweighted


def batch(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, labels = global_batch(C, D, B)
    norms = MAG_NORMS if CASES[key][0] == "magface" else NORMS
    return batch_at_angles(full_weight(C, D), labels, THETAS, norms), labels


def head_results(rank: int, world_size: int) -> dict:
    b = B // world_size
    out = {}
    for key, (name, params) in CASES.items():
        head = PartialFC(C, D, margin=margins.build(name, **params), seed=SEED, chunk_size=CHUNK, init_std=INIT_STD,
                         backbone_grad_average=False).double()
        head.step = STEP
        if name == "curricularface":
            head.margin.t.fill_(CURRICULAR_T)
        x, labels = batch(key)
        x_local = x[rank * b : (rank + 1) * b].clone().requires_grad_()
        loss = head(x_local, labels[rank * b : (rank + 1) * b])
        loss.backward()
        out[key] = {"loss": loss.detach(), "grad_x": x_local.grad, "weight": head.weight.detach(),
                    "grad_w": head.weight.grad.to_dense()}
    return out


@pytest.fixture(scope="module")
def results() -> dict[int, list[dict]]:
    return at_world_sizes(head_results)


def reference_grads(key: str):
    name, params = CASES[key]
    x, labels = batch(key)
    x, w = x.clone().requires_grad_(), full_weight(C, D).requires_grad_()
    if name in MODERN:
        state = {"t": CURRICULAR_T} if name == "curricularface" else None
        loss, _ = reference.modern_loss(name, params, x, w, labels, state=state)
    else:
        loss = reference.loss(name, params, x, w, labels, step=STEP)
    loss.backward()
    return loss.detach(), x.grad, w.grad


# fp64 on both sides; the head's cos(theta + m) = cos cos m - sin sin m and T_m(cos) against the
# oracle's arccos then cos, and another summation order: ~1e-14 relative. A wrong branch moves
# the loss by >= 1e-3 here.
TOL = dict(rtol=1e-9, atol=1e-11)


def test_the_batch_reaches_every_branch():
    x, labels = batch("arcface")
    w = full_weight(C, D)[labels]
    theta = torch.arccos((x * w).sum(1) / (x.norm(dim=1) * w.norm(dim=1)))
    torch.testing.assert_close(theta, torch.tensor(THETAS, dtype=torch.float64), rtol=0, atol=1e-7)
    assert int((theta > math.pi - 0.5).sum()) == 5  # ArcFace / CurricularFace fallback
    assert int((theta > (math.pi - 0.4) / 0.9).sum()) == 4  # Combined fallback
    assert int((theta > math.pi - 0.45).sum()) >= 4 and int((theta < math.pi / 2).sum()) == 4  # MagFace, both sides
    for m in (3, 4):
        assert set(torch.clamp(torch.floor(theta * m / math.pi), max=m - 1).tolist()) == set(range(m))


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("key", list(CASES))
def test_head_matches_reference_on_every_branch(results, world_size, key):
    per_rank = [r[key] for r in results[world_size]]
    assert torch.equal(torch.cat([r["weight"] for r in per_rank]), full_weight(C, D))  # the batch was built on it
    ref_loss, ref_gx, ref_gw = reference_grads(key)
    for r in per_rank:
        torch.testing.assert_close(r["loss"], ref_loss, **TOL)
    torch.testing.assert_close(torch.cat([r["grad_x"] for r in per_rank]), ref_gx, **TOL)
    torch.testing.assert_close(torch.cat([r["grad_w"] for r in per_rank]), ref_gw, **TOL)


def test_the_branches_change_the_loss():
    # Guard that the comparison above could fail: MagFace's two settings differ on this batch,
    # as would a wrong fallback or a psi branch with the wrong sign.
    assert abs(float(reference_grads("magface")[0] - reference_grads("magface_no_easy")[0])) > 1e-2


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_on_every_branch(m):
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)[1:-1]
    k = torch.clamp(torch.floor(theta * m / math.pi), max=m - 1)
    assert set(k.tolist()) == set(range(m))
    expected = (-1.0) ** k * torch.cos(m * theta) - 2 * k  # the paper's definition, cos(m theta) directly
    torch.testing.assert_close(psi(torch.cos(theta), m), expected, rtol=0, atol=1e-9)
    got = psi(torch.cos(theta), m)
    assert torch.all(got[1:] < got[:-1])  # monotonically decreasing across the branch ends


def test_sphereface_target_on_every_branch_equals_the_oracle():
    sphere = margins.build("sphereface")
    w = torch.zeros(4, dtype=torch.float64)
    w[0] = 2.0
    for theta in THETAS:
        for step in (0, 400, 10**7):  # lambda 1000, 20.4, 5
            x = 1.7 * torch.tensor([math.cos(theta), math.sin(theta), 0.0, 0.0], dtype=torch.float64)
            cos = torch.tensor([math.cos(theta)], dtype=torch.float64)
            got = sphere.target_logit(cos, x_norm=x.norm()[None], w_norm=w.norm()[None], step=step)
            torch.testing.assert_close(got[0], reference.target_logit("sphereface", {}, x, w, step), rtol=1e-12, atol=1e-12)


def test_magface_easy_margin_at_the_issue_point():
    theta, s = math.radians(100.0), 64.0
    cos, norm = torch.tensor([math.cos(theta)], dtype=torch.float64), torch.tensor([60.0], dtype=torch.float64)
    m = 0.45 + (0.8 - 0.45) / 100.0 * 50.0  # 0.625 rad at |x| = 60
    easy = margins.build("magface").target_logit(cos, x_norm=norm, w_norm=norm, step=0)
    hard = margins.build("magface", easy_margin=False).target_logit(cos, x_norm=norm, w_norm=norm, step=0)
    assert float(easy) == pytest.approx(s * math.cos(theta), rel=1e-12)  # no margin at theta >= 90 deg
    assert float(hard) == pytest.approx(s * math.cos(theta + m), rel=1e-9)
    assert float(easy - hard) == pytest.approx(34.8, abs=0.05)
    inside = torch.tensor([math.cos(0.7)], dtype=torch.float64)  # cos > 0: both apply the margin
    for margin in (margins.build("magface"), margins.build("magface", easy_margin=False)):
        assert float(margin.target_logit(inside, x_norm=norm, w_norm=norm, step=0)) == pytest.approx(s * math.cos(0.7 + m))


def test_documented_defaults():
    norm, l2, mag, ls = (margins.build(n) for n in ("normface", "l2softmax", "magface", "lsoftmax"))
    assert (norm.scale, norm.learn_scale, norm.scale_min) == (64.0, False, 0.01)
    assert list(norm.parameters()) == []
    assert l2.alpha == 16.0
    assert mag.easy_margin is True  # the official MagLinear's default
    # the official L-Softmax MNIST recipe: base 1000, gamma 2.5e-5, power 35, lambda_min 0
    assert ls.m == 4 and ls.anneal == dict(base=1000.0, gamma=2.5e-5, power=35.0, minimum=0.0)


def test_l2softmax_default_alpha_bound():
    # Ranjan et al.: alpha >= log(p (C - 2) / (1 - p)); at p = 0.9 alpha = 16 holds up to C = 9.87e5.
    bound = lambda c, p=0.9: math.log(p * (c - 2) / (1 - p))  # noqa: E731
    alpha = margins.build("l2softmax").alpha
    assert bound(9.8e5) < alpha < bound(9.9e5) < bound(1e6)
