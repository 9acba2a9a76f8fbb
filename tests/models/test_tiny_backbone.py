"""iresnet_tiny: CPU-sized shapes and size, and the BN-free property the distributed tests need."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partial_fc import models
from partial_fc.models import is_batch_norm


@pytest.mark.parametrize(("input_size", "expected"), [(32, 85_144), (56, 109_720), (112, 208_024)])
def test_size_is_cpu_scale(input_size: int, expected: int) -> None:
    # Only the Linear into the embedding grows with the input: 64 * k * k * 128 weights for a
    # final k x k map, k = 1, 2, 4 at 32, 56, 112 (five stride-2 steps, rounding up).
    net = models.build("iresnet_tiny", embedding_dim=128, input_size=input_size, norm="none")
    assert models.count_parameters(net) == expected
    assert 5_000 < expected < 500_000


@pytest.mark.parametrize("input_size", [32, 56, 112])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_forward_backward_shapes(input_size: int, norm: str) -> None:
    torch.manual_seed(0)
    net = models.build("iresnet_tiny", embedding_dim=24, input_size=input_size, norm=norm)
    out = net(torch.rand(8, 3, input_size, input_size) * 2 - 1)
    assert out.shape == (8, 24) and torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), [
        n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0
    ]


@pytest.mark.parametrize("norm", ["group", "none"])
def test_bn_free_has_no_batch_norm(norm: str) -> None:
    net = models.build("iresnet_tiny", input_size=56, norm=norm)
    assert not any(is_batch_norm(m) for m in net.modules())
    assert any(is_batch_norm(m) for m in models.build("iresnet_tiny", input_size=56).modules())


def _sgd_step(
    net: nn.Module, shards: list[torch.Tensor], targets: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One SGD step as data parallelism does it: per-shard mean loss, gradients averaged."""
    net.zero_grad()
    for x, t in zip(shards, targets):
        # Dividing by the shard count is DDP's gradient averaging.
        ((net(x) - t).square().mean() / len(shards)).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    return {k: v.clone() for k, v in net.state_dict().items()}


def _step_gap(norm: str, world_size: int) -> float:
    torch.manual_seed(0)
    net = models.build("iresnet_tiny", embedding_dim=16, input_size=32, norm=norm).double()
    x = torch.rand(8, 3, 32, 32, dtype=torch.float64) * 2 - 1
    t = torch.randn(8, 16, dtype=torch.float64)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    whole = _sgd_step(net, [x], [t])
    net.load_state_dict(start)
    split = _sgd_step(net, list(x.chunk(world_size)), list(t.chunk(world_size)))
    return max((whole[k] - split[k]).abs().max().item() for k in whole if whole[k].is_floating_point())


@pytest.mark.parametrize("norm", ["group", "none"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_bn_free_step_is_independent_of_batch_split(norm: str, world_size: int) -> None:
    # Without batch statistics the global-batch step equals the average of per-shard steps;
    # in float64 only summation order differs (~1e-16 relative), hence 1e-12.
    assert _step_gap(norm, world_size) < 1e-12


def test_batch_norm_step_depends_on_batch_split() -> None:
    # The control: BatchNorm statistics differ per shard, so the same comparison fails.
    assert _step_gap("batch", 2) > 1e-6
