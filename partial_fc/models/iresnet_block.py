"""IBasicBlock: the improved residual block of ArcFace's IResNet.

Deng et al., "ArcFace" (CVPR 2019) and Duta et al., "Improved Residual Networks" (2020):
BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, added to the (downsampled) input, with
no activation after the addition. Attribute names follow arcface_torch so that its
checkpoints map onto these modules key for key.
"""

from __future__ import annotations

from torch import Tensor, nn

from partial_fc.models.norms import NormKind, norm2d


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: NormKind) -> None:
        super().__init__()
        self.bn1 = norm2d(norm, in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.bn2 = norm2d(norm, out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, stride=stride)
        self.bn3 = norm2d(norm, out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv1x1(in_channels, out_channels, stride=stride), norm2d(norm, out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut
