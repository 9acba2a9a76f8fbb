"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018), with arcface_torch's widening knob.

The paper's layer table (112x112 input): conv3x3 64 s2 -> depthwise conv3x3 64 -> bottlenecks
(t=2, c=64, n=5, s=2), (t=4, c=128, n=1, s=2), (t=2, c=128, n=6, s=1), (t=4, c=128, n=1, s=2),
(t=2, c=128, n=2, s=1) -> conv1x1 512 -> linear GDC 7x7 -> linear 1x1 to the embedding
(0.99M parameters and 221M multiply-adds at 128-d; this code: 1.00M and 221.0M).

``scale`` widens the trunk (64/128 channels times `scale`) while the bottleneck expansions stay
at 128/256/512 channels, which is how arcface_torch's ``MobileFaceNet(scale=...)`` does it:
``scale=1`` is the paper's network, ``scale=2`` arcface_torch's ``mbf`` and
``blocks=(2, 8, 12, 4), scale=4`` its ``mbf_large``. ``blocks`` counts, per stage, the
stride-1 units: the leading depthwise conv (1) or bottlenecks replacing it (>1), then the
residual bottlenecks after each of the three stride-2 bottlenecks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from partial_fc.models.checks import check_common, check_input, conv_out
from partial_fc.models.mobilefacenet_blocks import (
    Bottleneck,
    ConvNormAct,
    GlobalDepthwiseEmbedding,
)
from partial_fc.models.norms import NormKind, check_norm
from partial_fc.models.precision import full_precision, low_precision

_PRELU_INIT = 0.25
_SEP_CHANNELS = 512
# Groups of the leading 3x3 conv: depthwise at scale 1; arcface_torch keeps 64 at larger scales.
_STEM_DW_GROUPS = 64


class MobileFaceNet(nn.Module):
    """(N, 3, input_size, input_size) float in [-1, 1] -> (N, embedding_dim) float32 embeddings."""

    def __init__(
        self,
        *,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 1,
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        fp16: bool = False,
        norm: NormKind = "batch",
        arch: str = "mobilefacenet",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"{arch}: blocks must be 4 positive ints, got {list(blocks)}")
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise ValueError(f"{arch}: scale must be a positive int, got {scale!r}")
        check_common(
            arch,
            embedding_dim=embedding_dim,
            input_size=input_size,
            dropout=dropout,
            min_input_size=1,
        )
        check_norm(norm)
        self.arch = arch
        self.input_size = input_size
        self.fp16 = fp16
        c1, c2 = 64 * scale, 128 * scale

        def down(in_c: int, out_c: int, hidden: int) -> nn.Module:
            return Bottleneck(in_c, out_c, hidden=hidden, stride=2, norm=norm)

        def residuals(channels: int, count: int, hidden: int) -> list[nn.Module]:
            return [
                Bottleneck(channels, channels, hidden=hidden, stride=1, norm=norm)
                for _ in range(count)
            ]

        body: list[nn.Module] = [ConvNormAct(3, c1, kernel_size=3, stride=2, norm=norm)]
        if blocks[0] == 1:
            body.append(ConvNormAct(c1, c1, kernel_size=3, groups=_STEM_DW_GROUPS, norm=norm))
        else:
            body += residuals(c1, blocks[0], 128)
        body += [down(c1, c1, 128), *residuals(c1, blocks[1], 128)]
        body += [down(c1, c2, 256), *residuals(c2, blocks[2], 256)]
        body += [down(c2, c2, 512), *residuals(c2, blocks[3], 256)]
        self.body = nn.Sequential(*body)
        self.conv_sep = ConvNormAct(c2, _SEP_CHANNELS, norm=norm)

        size = input_size
        for _ in range(4):
            size = conv_out(size, stride=2)
        self.feature_map_size = size
        self.features = GlobalDepthwiseEmbedding(
            _SEP_CHANNELS, map_size=size, embedding_dim=embedding_dim, dropout=dropout, norm=norm
        )
        self._init_weights(norm=norm)

    def _init_weights(self, *, norm: NormKind) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=_PRELU_INIT, nonlinearity="leaky_relu")
        if norm == "none":
            # Keep the trunk's scale bounded when residual branches add up without normalisation.
            residual = [m for m in self.modules() if isinstance(m, Bottleneck) and m.residual]
            with torch.no_grad():
                for module in residual:
                    module.project[0].weight.mul_(1.0 / math.sqrt(len(residual)))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self.arch, x, self.input_size)
        with low_precision(x, enabled=self.fp16):
            x = self.body(x)
        # As in arcface_torch, the 1x1 conv to 512 and the GDC run in float32.
        with full_precision(x):
            x = self.conv_sep(x.to(self.conv_sep[0].weight.dtype))
            return self.features(x)
