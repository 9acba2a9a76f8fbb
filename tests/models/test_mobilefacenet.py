"""MobileFaceNet: the paper's size at 128-d, arcface_torch's widened variant, GDC, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partial_fc import models
from partial_fc.models import is_batch_norm


def build_meta(**kwargs) -> nn.Module:
    with torch.device("meta"):
        return models.build("mobilefacenet", **kwargs)


def test_parameter_count_matches_paper_at_128d() -> None:
    # Chen et al. 2018 (MobileFaceNets) report 0.99M parameters for the 128-d network.
    # Measured: 1,003,136 in all (+1.3%); conv and linear weights alone are 976,000 (-1.4%),
    # so the paper's figure lies between the two ways of counting BN/PReLU parameters.
    net = build_meta(embedding_dim=128)
    count = models.count_parameters(net)
    assert count == 1_003_136
    assert abs(count - 0.99e6) / 0.99e6 < 0.02
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights == 976_000


def test_macs_match_paper() -> None:
    # The paper reports 221M MAdds at 112x112. Measured: 221.0M; the 512-d head adds 0.2M.
    assert round(models.count_macs(build_meta(embedding_dim=128), 112) / 1e6) == 221


def test_scale_two_is_arcface_torch_mbf() -> None:
    # arcface_torch's README names its `mbf` (scale=2) "mobilefacenet-0.45G"; measured 0.4375G
    # (the name rounds loosely), hence a 0.015G tolerance.
    assert abs(models.count_macs(build_meta(scale=2), 112) / 1e9 - 0.45) < 0.015
    # Exact counts of our rewrite of its channel plan (`mbf` and `mbf_large`), pinned.
    assert models.count_parameters(build_meta(scale=2)) == 2_059_520
    assert models.count_parameters(build_meta(scale=4, blocks=(2, 8, 12, 4))) == 6_314_880


@pytest.mark.parametrize(("input_size", "map_size"), [(112, 7), (56, 4), (32, 2)])
def test_output_shape_and_gdc_kernel(input_size: int, map_size: int) -> None:
    torch.manual_seed(0)
    net = models.build("mobilefacenet", embedding_dim=128, input_size=input_size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, input_size, input_size) * 2 - 1)
    assert out.shape == (2, 128) and torch.isfinite(out).all()
    # GDC: one depthwise kernel covering the whole final map, no pooling anywhere.
    gdc = net.features.gdc[0]
    assert gdc.kernel_size == (map_size, map_size) and gdc.groups == gdc.in_channels == 512
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) for m in net.modules())


def test_bottlenecks_are_depthwise_separable() -> None:
    net = build_meta()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.kernel_size == (3, 3) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # 1 leading depthwise conv + 15 bottlenecks (5 + 1 + 6 + 1 + 2 in the paper's layer table).
    assert len(depthwise) == 16


def test_trains_in_train_mode() -> None:
    torch.manual_seed(0)
    net = models.build("mobilefacenet", embedding_dim=64, input_size=56)
    out = net(torch.rand(4, 3, 56, 56) * 2 - 1)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_bn_free_variant(norm: str) -> None:
    net = models.build("mobilefacenet", embedding_dim=32, input_size=32, norm=norm)
    assert not any(is_batch_norm(m) for m in net.modules())
    out = net(torch.rand(1, 3, 32, 32) * 2 - 1)  # batch 1 in train mode: impossible with BN
    assert out.shape == (1, 32) and torch.isfinite(out).all()


def test_invalid_options_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"blocks must be 4 positive ints, got \[1, 4, 6\]"):
        models.build("mobilefacenet", blocks=(1, 4, 6))
    with pytest.raises(ValueError, match="scale must be a positive int, got 0"):
        models.build("mobilefacenet", scale=0)
