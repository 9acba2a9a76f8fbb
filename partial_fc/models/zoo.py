"""The registered backbones and their published configurations."""

from __future__ import annotations

from collections.abc import Sequence

from partial_fc.models.iresnet import IResNet
from partial_fc.models.mobilefacenet import MobileFaceNet
from partial_fc.models.norms import NormKind
from partial_fc.models.registry import Builder, register

# Blocks per stage, as in arcface_torch (iresnet18/34 follow ResNet; 50/100/200 are ArcFace's).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def _iresnet_builder(arch: str, layers: tuple[int, int, int, int]) -> Builder:
    def build(
        *,
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        fp16: bool = False,
        norm: NormKind = "batch",
    ) -> IResNet:
        return IResNet(
            layers,
            embedding_dim=embedding_dim,
            input_size=input_size,
            dropout=dropout,
            fp16=fp16,
            norm=norm,
            arch=arch,
        )

    build.__name__ = arch
    build.__doc__ = f"{arch}: IResNet with {list(layers)} blocks per stage (arcface_torch layout)."
    return build


for _arch, _layers in IRESNET_LAYERS.items():
    register(_arch)(_iresnet_builder(_arch, _layers))


@register("iresnet_tiny")
def iresnet_tiny(
    *,
    embedding_dim: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    fp16: bool = False,
    norm: NormKind = "batch",
    layers: Sequence[int] = (1, 1, 1, 1),
    widths: Sequence[int] = (8, 16, 32, 64),
) -> IResNet:
    """IResNet blocks at CPU scale for the demo and tests: stride-2 stem, widths 8..64.

    ~0.11M parameters at 56x56 with a 128-d embedding; inputs down to 1x1 work, 32/56/112 are
    the intended sizes.
    """
    return IResNet(
        tuple(layers),
        widths=tuple(widths),
        stem_stride=2,
        embedding_dim=embedding_dim,
        input_size=input_size,
        dropout=dropout,
        fp16=fp16,
        norm=norm,
        arch="iresnet_tiny",
    )


@register("mobilefacenet")
def mobilefacenet(
    *,
    embedding_dim: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    fp16: bool = False,
    norm: NormKind = "batch",
    scale: int = 1,
    blocks: Sequence[int] = (1, 4, 6, 2),
) -> MobileFaceNet:
    """MobileFaceNet; scale=1 is the paper's, scale=2 arcface_torch's ``mbf``."""
    return MobileFaceNet(
        blocks=tuple(blocks),
        scale=scale,
        embedding_dim=embedding_dim,
        input_size=input_size,
        dropout=dropout,
        fp16=fp16,
        norm=norm,
    )
