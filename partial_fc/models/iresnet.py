"""IResNet: the ArcFace ResNet family (iresnet18 ... iresnet200) and a tiny CPU variant.

Layout of arcface_torch's ``backbones/iresnet.py`` (written afresh here, same attribute names so
its checkpoints load key for key): stem conv3x3(64) + BN + PReLU at full resolution, four
stages of IBasicBlocks (widths 64/128/256/512, each starting with stride 2), then
BN2d -> flatten -> dropout -> Linear(512 * 7 * 7 -> D) -> BatchNorm1d with its weight fixed
at 1.0 (the "features" layer). A 112x112 input leaves a 7x7 map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from partial_fc.models.checks import check_common, check_input, conv_out
from partial_fc.models.iresnet_block import IBasicBlock, conv3x3
from partial_fc.models.norms import NormKind, check_norm, norm1d, norm2d
from partial_fc.models.precision import full_precision, low_precision

# PReLU's initial slope; He init for a leaky ReLU with this slope keeps activations' scale.
_PRELU_INIT = 0.25


class IResNet(nn.Module):
    """(N, 3, input_size, input_size) float in [-1, 1] -> (N, embedding_dim) float32 embeddings."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_stride: int = 1,
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        fp16: bool = False,
        norm: NormKind = "batch",
        arch: str = "iresnet",
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or len(layers) == 0 or min(layers) < 1 or min(widths) < 1:
            raise ValueError(
                f"{arch}: layers {list(layers)} and widths {list(widths)} must be non-empty, "
                "of equal length and positive (at least one block per stage)"
            )
        if stem_stride not in (1, 2):
            raise ValueError(f"{arch}: stem_stride must be 1 or 2, got {stem_stride!r}")
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

        self.conv1 = conv3x3(3, widths[0], stride=stem_stride)
        self.bn1 = norm2d(norm, widths[0])
        self.prelu = nn.PReLU(widths[0])
        size = conv_out(input_size, stride=stem_stride)
        self.stage_names: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(len(layers)))
        in_channels = widths[0]
        for stage_name, blocks, width in zip(self.stage_names, layers, widths):
            stage = [IBasicBlock(in_channels, width, stride=2, norm=norm)]
            stage += [IBasicBlock(width, width, stride=1, norm=norm) for _ in range(blocks - 1)]
            setattr(self, stage_name, nn.Sequential(*stage))
            in_channels = width
            size = conv_out(size, stride=2)
        self.feature_map_size = size

        self.bn2 = norm2d(norm, in_channels)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * size * size, embedding_dim)
        self.features = norm1d(norm, embedding_dim, fixed_scale=True)
        self._init_weights(norm=norm, total_blocks=sum(layers))

    def _init_weights(self, *, norm: NormKind, total_blocks: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=_PRELU_INIT, nonlinearity="leaky_relu")
        if norm == "none":
            # Without normalisation every residual branch adds its variance to the trunk;
            # shrinking the last conv of each branch keeps the trunk's scale bounded with depth.
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    with torch.no_grad():
                        module.conv2.weight.mul_(1.0 / math.sqrt(total_blocks))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self.arch, x, self.input_size)
        with low_precision(x, enabled=self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            for stage_name in self.stage_names:
                x = getattr(self, stage_name)(x)
            x = self.bn2(x)
            x = self.dropout(torch.flatten(x, 1))
        with full_precision(x):
            x = self.fc(x.to(self.fc.weight.dtype))
            return self.features(x)
