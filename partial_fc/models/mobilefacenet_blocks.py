"""Building blocks of MobileFaceNet: conv-norm-PReLU, inverted bottleneck, global depthwise conv."""

from __future__ import annotations

from torch import Tensor, nn

from partial_fc.models.norms import NormKind, norm1d, norm2d


class ConvNormAct(nn.Sequential):
    """kxk conv (padding k // 2) -> norm -> PReLU; ``act=False`` leaves it linear."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        norm: NormKind,
        act: bool = True,
    ) -> None:
        pad = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, pad, groups=groups, bias=False
            ),
            norm2d(norm, out_channels),
        ]
        if act:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual with PReLU (the "bottleneck" of Chen et al. 2018).

    1x1 expand to `hidden` -> 3x3 depthwise (stride) -> 1x1 linear projection; the input is
    added back when `residual` (stride 1 and equal widths).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, hidden: int, stride: int, norm: NormKind
    ) -> None:
        super().__init__()
        self.residual = stride == 1 and in_channels == out_channels
        self.expand = ConvNormAct(in_channels, hidden, norm=norm)
        self.depthwise = ConvNormAct(
            hidden, hidden, kernel_size=3, stride=stride, groups=hidden, norm=norm
        )
        self.project = ConvNormAct(hidden, out_channels, norm=norm, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class GlobalDepthwiseEmbedding(nn.Module):
    """GDC: a depthwise conv over the whole final map replaces global pooling, so each spatial
    position keeps its own learned weight (faces are aligned, positions matter); then a linear
    map to the embedding. (N, C, k, k) -> (N, embedding_dim)."""

    def __init__(
        self, channels: int, *, map_size: int, embedding_dim: int, dropout: float, norm: NormKind
    ) -> None:
        super().__init__()
        self.gdc = ConvNormAct(
            channels,
            channels,
            kernel_size=map_size,
            groups=channels,
            padding=0,
            norm=norm,
            act=False,
        )
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(channels, embedding_dim, bias=False)
        self.norm = norm1d(norm, embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.gdc(x).flatten(1))
        return self.norm(self.linear(x))
