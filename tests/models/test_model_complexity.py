"""count_macs / count_parameters against hand-computed figures."""

from __future__ import annotations

import torch
from torch import nn

from partial_fc.models import count_macs, count_parameters


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # 8x8 -> 4x4
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.frozen = nn.Parameter(torch.ones(7), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(self.conv(x)).flatten(1))


def test_counts_by_hand() -> None:
    net = _Net()
    # conv: 16 outputs x 4 channels x (3 * 9) = 1728; depthwise: 16 x 4 x 9 = 576; fc: 64 x 5 = 320.
    assert count_macs(net, 8) == 1728 + 576 + 320
    assert count_parameters(net) == 108 + 36 + 325 + 7
    assert count_parameters(net, trainable_only=True) == 108 + 36 + 325
