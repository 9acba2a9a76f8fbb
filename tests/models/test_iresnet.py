"""IResNet family: published parameter counts, shapes, arcface_torch layout, precision, norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partial_fc import models
from partial_fc.models import is_batch_norm

BIG = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]


def build_meta(name: str, **kwargs) -> nn.Module:
    # The meta device holds shapes only: the 119M-parameter iresnet200 costs no memory or init time.
    with torch.device("meta"):
        return models.build(name, **kwargs)


# Published sizes at 112x112, 512-d: iresnet50 ~43.6M and iresnet100 ~65.2M parameters (the
# figures usually quoted for arcface_torch's r50/r100; its README itself lists only FLOPs, checked
# below). OpenVINO's model card for the MXNet-trained ResNet100-ArcFace export lists 65.1320M.
# Measured here: 43,590,848 and 65,156,160: 0.02% and 0.07% from the rounded figures, 0.04% from
# OpenVINO's. Rounding to 0.1M allows ~0.1%; 0.5% still catches a block missing from stage 2 on
# (>= 0.29M); the exact counts below pin the rest. Includes the fixed "features" BN weight.
@pytest.mark.parametrize(
    ("name", "published", "rel_tol"),
    [("iresnet50", 43.6e6, 0.005), ("iresnet100", 65.2e6, 0.005)],
)
def test_parameter_count_matches_published(name: str, published: float, rel_tol: float) -> None:
    count = models.count_parameters(build_meta(name))
    assert abs(count - published) / published < rel_tol, f"{name}: {count:,} vs {published:,.0f}"


# Multiply-accumulates at 112x112, in GMACs, from arcface_torch's README (its "FLOPs" column of the
# WF42M table: r18 2.6, r50 6.3, r100 12.1, r200 23.5). Measured: 2.610, 6.309, 12.090, 23.419.
# r18/r50/r100 agree to rounding; r200 is 0.3% low, more than rounding (their counter likely adds
# something beyond conv/linear MACs), hence 1%. Parameter counts cannot see strides; this test
# does (a stride moved by one stage changes MACs by far more than 1%).
@pytest.mark.parametrize(
    ("name", "published_gmacs"),
    [("iresnet18", 2.6), ("iresnet50", 6.3), ("iresnet100", 12.1), ("iresnet200", 23.5)],
)
def test_macs_match_published(name: str, published_gmacs: float) -> None:
    gmacs = models.count_macs(build_meta(name), 112) / 1e9
    assert abs(gmacs - published_gmacs) / published_gmacs < 0.01, gmacs


# Exact counts pin the architecture: a changed kernel, width or block count moves them.
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("iresnet18", 24_025_600),
        ("iresnet34", 34_139_328),
        ("iresnet50", 43_590_848),
        ("iresnet100", 65_156_160),
        ("iresnet200", 118_833_920),
    ],
)
def test_parameter_count_exact(name: str, expected: int) -> None:
    assert models.count_parameters(build_meta(name)) == expected


@pytest.mark.parametrize("name", BIG)
def test_output_shape_on_meta(name: str) -> None:
    net = build_meta(name, embedding_dim=256)
    out = net(torch.empty(2, 3, 112, 112, device="meta"))
    assert out.shape == (2, 256)
    assert net.feature_map_size == 7
    assert net.fc.in_features == 512 * 7 * 7


def test_iresnet18_real_forward_and_backward() -> None:
    torch.manual_seed(0)
    net = models.build("iresnet18", embedding_dim=128)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    out = net(x)
    assert out.shape == (2, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_state_dict_keys_follow_arcface_torch_layout() -> None:
    # Same names as arcface_torch's backbones/iresnet.py, so its checkpoints load key for key.
    state = build_meta("iresnet50").state_dict()
    for key in [
        "conv1.weight",
        "bn1.running_mean",
        "prelu.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer3.13.bn3.weight",
        "layer3.13.conv2.weight",
        "layer4.2.prelu.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_var",
    ]:
        assert key in state, key
    assert "layer3.14.bn1.weight" not in state  # iresnet50 has 14 blocks in stage 3
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)


def test_block_structure() -> None:
    block = build_meta("iresnet50").layer2[0]
    assert [type(m) for m in block.children()] == [
        nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d, nn.Sequential
    ]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride on the 2nd conv
    assert block.downsample[0].kernel_size == (1, 1)
    assert build_meta("iresnet50").layer2[1].downsample is None


def test_features_scale_is_fixed_at_one() -> None:
    net = models.build("iresnet_tiny", embedding_dim=16, input_size=32)
    assert isinstance(net.features, nn.BatchNorm1d)
    assert not net.features.weight.requires_grad
    assert torch.equal(net.features.weight, torch.ones(16))
    assert net.features.bias.requires_grad


def test_wrong_input_size_names_the_fix() -> None:
    net = models.build("iresnet_tiny", input_size=56)
    with pytest.raises(ValueError, match=r"\(N, 3, 56, 56\).*got \(2, 3, 32, 32\).*input_size"):
        net(torch.zeros(2, 3, 32, 32))


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="embedding_dim must be a positive int, got 0"):
        models.build("iresnet50", embedding_dim=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        models.build("iresnet50", dropout=1.5)
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'group', 'none'\], got 'bn'"):
        models.build("iresnet50", norm="bn")


def test_fp16_runs_body_in_low_precision_and_returns_float32() -> None:
    net = models.build("iresnet_tiny", embedding_dim=32, input_size=32, fp16=True)
    seen: dict[str, torch.dtype] = {}
    net.layer2.register_forward_hook(lambda _m, _i, out: seen.update(body=out.dtype))
    out = net(torch.rand(4, 3, 32, 32) * 2 - 1)
    # On CPU autocast's low-precision dtype is bfloat16 (float16 on CUDA).
    assert seen["body"] == torch.get_autocast_dtype("cpu")
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)


def test_embedding_layers_stay_float32_under_callers_autocast() -> None:
    net = models.build("iresnet_tiny", embedding_dim=32, input_size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda() -> None:
    net = models.build("iresnet18", embedding_dim=64, fp16=True).cuda()
    out = net(torch.rand(4, 3, 112, 112, device="cuda") * 2 - 1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["group", "none"])
def test_bn_free_big_network_has_no_batch_norm(norm: str) -> None:
    net = build_meta("iresnet50", norm=norm)
    assert not any(is_batch_norm(m) for m in net.modules())
    assert any(is_batch_norm(m) for m in build_meta("iresnet50").modules())
