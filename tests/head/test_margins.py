"""Margin transforms: gradcheck, registry, paper defaults, the ArcFace fallback rule."""

from __future__ import annotations

import math

import pytest
import torch

from partial_fc import PartialFC, margins
from tests.head.cases import MARGINS, STEP


@pytest.mark.parametrize("name", list(MARGINS))
def test_target_logit_passes_gradcheck(name):
    margin = margins.build(name, **MARGINS[name])
    g = torch.Generator().manual_seed(0)
    cos = (torch.rand(16, generator=g, dtype=torch.float64) * 1.9 - 0.95).requires_grad_()
    x_norm = (torch.rand(16, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    w_norm = (torch.rand(16, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    fn = lambda c, xn, wn: margin.target_logit(c, x_norm=xn, w_norm=wn, step=STEP)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cos, x_norm, w_norm))


@pytest.mark.parametrize("name", list(MARGINS))
def test_whole_head_passes_gradcheck_for_embeddings(name):
    torch.manual_seed(0)
    head = PartialFC(37, 5, margin=margins.build(name, **MARGINS[name]), chunk_size=8, init_std=0.5).double()
    head.weight.requires_grad_(False)
    head.eval()  # keep step fixed across gradcheck's repeated evaluations
    head.step = STEP
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 36, 5, 5, 20, 11])
    # The first backward uses the exponentials kept from the forward, a repeated one recomputes
    # them: identical math, different rounding (~1e-16), hence a tiny nondeterminism tolerance.
    assert torch.autograd.gradcheck(lambda e: head(e, labels), (x,), nondet_tol=1e-12)


def test_registry_lists_choices_and_rejects_unknown_parameters():
    with pytest.raises(ValueError, match=r"unknown margin 'arcfce'.*choose from \['arcface'"):
        margins.build("arcfce")
    with pytest.raises(ValueError, match=r"^unknown parameters \['m'\] for margin 'arcface'; valid: \['scale', 'margin_rad'\]"):
        margins.build("arcface", m=0.5)


def test_paper_defaults():
    arc, cos, sphere = margins.build("arcface"), margins.build("cosface"), margins.build("sphereface")
    assert (arc.scale, arc.margin_rad) == (64.0, 0.5)
    assert (cos.scale, cos.margin) == (64.0, 0.35)
    assert sphere.m == 4 and sphere.anneal == dict(base=1000.0, gamma=0.12, power=1.0, minimum=5.0)
    comb = margins.build("combined")
    assert (comb.m1, comb.m2_rad, comb.m3) == (1.0, 0.3, 0.2)
    norm, l2 = margins.build("normface"), margins.build("l2softmax")
    assert (norm.scale, norm.learn_scale, l2.alpha) == (64.0, False, 16.0)


@pytest.mark.parametrize("name,params,match", [
    ("arcface", {"margin_rad": 4.0}, "margin_rad"), ("arcface", {"scale": 0}, "scale"),
    ("sphereface", {"m": 2.5}, "integer"), ("cosface", {"margin": -1}, "margin"), ("l2softmax", {"alpha": -1}, "alpha"),
])
def test_bad_margin_parameters_name_the_value(name, params, match):
    with pytest.raises(ValueError, match=match):
        margins.build(name, **params)


def test_arcface_target_is_continuous_and_monotone_beyond_pi_minus_m():
    arc = margins.build("arcface", scale=1.0, margin_rad=0.5)
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    f = arc.modify(torch.cos(theta))
    assert torch.all(f[1:] <= f[:-1] + 1e-12)  # never rewards a larger angle
    assert torch.max(torch.abs(f[1:] - f[:-1])) < 1e-3  # no jump at theta_t = pi - m
    inside = theta < math.pi - 0.5
    # sin theta is sqrt(max(1 - cos^2, 1e-12)) to keep the gradient finite at cos = 1, which
    # moves the value there by at most sin(m) * 1e-6.
    torch.testing.assert_close(f[inside], torch.cos(theta[inside] + 0.5), rtol=0, atol=1e-6)


def test_sphereface_lambda_anneals_from_base_to_minimum():
    sphere = margins.build("sphereface")
    cos, one = torch.tensor([0.5], dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    early = sphere.target_logit(cos, x_norm=one, w_norm=one, step=0)
    late = sphere.target_logit(cos, x_norm=one, w_norm=one, step=10**7)
    psi = -math.cos(4 * math.acos(0.5)) - 2  # theta = 60 deg is in [pi/4, pi/2): k = 1
    assert float(early) == pytest.approx((1000 * 0.5 + psi) / 1001)
    assert float(late) == pytest.approx((5 * 0.5 + psi) / 6)


def test_only_the_unknown_parameters_are_named():
    # switching a config's margin keeps its margin_params: the message must say which one is foreign
    with pytest.raises(ValueError, match=r"^unknown parameters \['margin_rad'\] for margin 'adaface'"):
        margins.build("adaface", scale=32.0, margin_rad=0.3)
    with pytest.raises(ValueError, match=r"^bad parameters \['scale'\] \(.*\) for margin 'arcface'"):
        margins.build("arcface", scale="big")
