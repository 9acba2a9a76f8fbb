"""Backbones: images (N, 3, H, W) in [-1, 1] -> embeddings (N, D). Single-device code only.

    from partial_fc import models
    net = models.build("iresnet50", embedding_dim=512)
    models.names()  # ['iresnet100', ..., 'mobilefacenet']
"""

from partial_fc.models import zoo as _zoo  # noqa: F401  (registers the backbones)
from partial_fc.models.complexity import count_macs, count_parameters
from partial_fc.models.iresnet import IResNet
from partial_fc.models.mobilefacenet import MobileFaceNet
from partial_fc.models.norms import NORM_KINDS, NormKind, is_batch_norm
from partial_fc.models.registry import arguments, build, names, register

__all__ = [
    "NORM_KINDS",
    "IResNet",
    "MobileFaceNet",
    "NormKind",
    "arguments",
    "build",
    "count_macs",
    "count_parameters",
    "is_batch_norm",
    "names",
    "register",
]
