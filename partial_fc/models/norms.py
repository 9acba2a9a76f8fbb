"""Normalisation layers chosen by name, so every backbone can be built BatchNorm-free.

``"batch"`` is the published design. ``"group"`` and ``"none"`` make a backbone's output for one
sample independent of the rest of the batch, which is what a test comparing one optimizer step
at world size 1 and N needs (BatchNorm statistics would differ between the two).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from torch import nn

NormKind = Literal["batch", "group", "none"]
NORM_KINDS: tuple[str, ...] = get_args(NormKind)

# GroupNorm groups are capped so that each group keeps at least this many channels.
_MIN_CHANNELS_PER_GROUP = 4
_MAX_GROUPS = 32


def check_norm(norm: str) -> None:
    if norm not in NORM_KINDS:
        raise ValueError(f"norm must be one of {list(NORM_KINDS)}, got {norm!r}")


def group_count(channels: int) -> int:
    """Number of GroupNorm groups for `channels`: a divisor of it, at most 32."""
    groups = math.gcd(channels, _MAX_GROUPS)
    while groups > 1 and channels // groups < _MIN_CHANNELS_PER_GROUP:
        groups //= 2
    return groups


def norm2d(norm: NormKind, channels: int) -> nn.Module:
    """Normalisation of (N, C, H, W) maps."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels, eps=1e-5)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels, eps=1e-5)
    return nn.Identity()


def norm1d(norm: NormKind, features: int, *, fixed_scale: bool = False) -> nn.Module:
    """Normalisation of (N, D) embeddings.

    With `fixed_scale` the affine weight stays at 1.0 and is not trained, as in the "features"
    layer of arcface_torch: the head normalises embeddings anyway, and a trainable scale there
    only lets the embedding norm drift.
    """
    check_norm(norm)
    if norm == "none":
        return nn.Identity()
    layer: nn.BatchNorm1d | nn.GroupNorm
    if norm == "batch":
        layer = nn.BatchNorm1d(features, eps=1e-5)
    else:
        # One group over the whole embedding: a per-sample LayerNorm that accepts (N, D).
        layer = nn.GroupNorm(1, features, eps=1e-5)
    if fixed_scale:
        nn.init.constant_(layer.weight, 1.0)
        layer.weight.requires_grad_(False)
    return layer


def is_batch_norm(module: nn.Module) -> bool:
    """True for every BatchNorm flavour (1d/2d/3d, SyncBatchNorm, lazy ones)."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and not isinstance(
        module, nn.modules.instancenorm._InstanceNorm
    )
